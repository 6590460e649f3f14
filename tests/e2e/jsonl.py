"""Reading JSON-lines files that another process is still appending to."""

import json
from pathlib import Path
from typing import Any


def whole_records(path: Path) -> list[dict[str, Any]]:
    """Every complete line of `path` parsed as JSON, oldest first. A last line
    without its newline is being written as we read and is left for the next
    read: parsing it would fail on half a record."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text[: text.rfind("\n") + 1].splitlines()
    return [json.loads(line) for line in lines if line.strip()]
