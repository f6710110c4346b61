"""Write (or with --check, compare) spec/openapi.json from the app."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sandbank.server.app import create_app
from sandbank.server.settings import Settings

SPEC = Path(__file__).resolve().parent.parent / "spec" / "openapi.json"


def render() -> str:
    app = create_app(Settings(runtime="fake", data_dir=Path("/nonexistent")))
    return json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if not SPEC.exists() or SPEC.read_text() != text:
            print(f"{SPEC} is stale: run `python scripts/export_openapi.py`", file=sys.stderr)
            return 1
        return 0
    SPEC.parent.mkdir(exist_ok=True)
    SPEC.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
