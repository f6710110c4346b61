"""``python -m sandbank``: the same as the ``sandbank`` command."""

from sandbank.entry import main

main()
