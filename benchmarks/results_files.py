"""A benchmark's committed output: OUT.json (its record, for tests and later scripts) and OUT.txt (the
report people read, also printed)."""
from __future__ import annotations

import json
import os
from typing import Any, Dict


def write(out: str, record: Dict[str, Any], text: str, sort_keys: bool = False) -> None:
    """`record` to OUT.json and `text` to OUT.txt (ending in one newline); prints `text`."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    text = text.rstrip("\n") + "\n"
    with open(out + ".json", "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, sort_keys=sort_keys)
    with open(out + ".txt", "w", encoding="utf-8") as f:
        f.write(text)
    print(text, end="")
