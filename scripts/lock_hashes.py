"""Write requirements.lock with a sha256 hash on every pin (what `pip install --require-hashes` checks).

    .venv/bin/python scripts/lock_hashes.py [requirements.lock]

Reads the pins (``name==version``) of the lock, asks pip which file it would install for each on this
platform (``pip install --dry-run --report``: it reads PyPI's index, which publishes every file's
sha256; nothing is installed) and rewrites the lock as one ``name==version --hash=sha256:...`` line
per package, comments kept. pip runs isolated from local pip settings (find-links, extra index
URLs), against https://pypi.org/simple only, so the hashes are PyPI's.

The hashes are those of the files pip picks here: CPython 3.10 on Linux x86_64 (the Dockerfile's
platform). On another platform pip would pick other wheels and refuse them: run this there to add
theirs (a pin may carry several ``--hash`` options).

To change a pin: edit the ``name==version`` (drop its hashes), then run this script.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Dict, List, Tuple

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")
HASH = re.compile(r"--hash=(sha256:[0-9a-f]{64})")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: str) -> Tuple[List[str], List[Tuple[str, str, List[str]]]]:
    """(comment lines before the first pin, [(name, version, hashes)]) of a lock file."""
    with open(path, encoding="utf-8") as f:
        text = f.read().replace("\\\n", " ")
    header, pins = [], []
    for line in text.splitlines():
        stripped = line.strip()
        match = PIN.match(stripped)
        if match:
            pins.append((match.group(1), match.group(2), HASH.findall(stripped)))
        elif not pins and (stripped.startswith("#") or not stripped):
            header.append(line.rstrip())
        elif stripped and not stripped.startswith("#"):
            raise ValueError(f"{path}: not a name==version pin: {stripped!r}")
    return header, pins


def pypi_hashes(pins: List[Tuple[str, str, List[str]]]) -> Dict[str, str]:
    """{normalized name: sha256:...} of the file pip would install for each pin here."""
    with tempfile.TemporaryDirectory() as tmp:
        requirements = os.path.join(tmp, "pins.txt")
        with open(requirements, "w", encoding="utf-8") as f:
            f.write("".join(f"{name}=={version}\n" for name, version, _ in pins))
        report = os.path.join(tmp, "report.json")
        command = [sys.executable, "-m", "pip", "install", "--isolated", "--disable-pip-version-check",
                   "--quiet", "--dry-run", "--ignore-installed", "--no-deps", "--index-url",
                   "https://pypi.org/simple", "--report", report, "-r", requirements]
        cert = os.environ.get("PIP_CERT") or os.environ.get("REQUESTS_CA_BUNDLE")
        if cert:
            command[4:4] = ["--cert", cert]
        subprocess.run(command, check=True)
        with open(report, encoding="utf-8") as f:
            installs = json.load(f)["install"]
    out = {}
    for item in installs:
        archive = item["download_info"].get("archive_info", {})
        digest = (archive.get("hashes") or {}).get("sha256")
        if not digest:
            raise RuntimeError(f"PyPI gave no sha256 for {item['download_info']['url']}")
        out[normalize(item["metadata"]["name"])] = f"sha256:{digest}"
    return out


def main(argv: List[str]) -> int:
    path = argv[0] if argv else os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                             "requirements.lock")
    header, pins = read_lock(path)
    found = pypi_hashes(pins)
    lines = []
    for name, version, hashes in pins:
        digest = found.get(normalize(name))
        if digest is None:
            raise RuntimeError(f"pip resolved no file for {name}=={version}")
        merged = list(dict.fromkeys(hashes + [digest]))  # keep other platforms' hashes
        lines.append(f"{name}=={version} " + " ".join(f"--hash={h}" for h in merged))
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write("\n".join(header).rstrip("\n") + "\n" + "\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)
    print(f"{path}: {len(lines)} pins with hashes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
