"""``python -m sandbank.cli``."""

from sandbank.cli.main import app

app(prog_name="sandbank")
