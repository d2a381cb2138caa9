"""A PEP 503 simple index of a few wheels, laid out for hack/condaserver.py's ChannelServer to serve.

PyPI's files come with `Cache-Control: max-age=365000000, immutable, public`, which is what lets pip keep them in
its HTTP cache; this machine's TLS proxy drops that header, so pip through it caches nothing. Tests that show pip
taking a wheel from the package cache serve the wheels (downloaded from PyPI once, through the proxy) from this
index with PyPI's header instead.
"""

from __future__ import annotations

import hashlib
import html
import re
import subprocess
import sys
from pathlib import Path

# What PyPI sends with every file it serves.
PYPI_FILE_CACHE_CONTROL = "max-age=365000000, immutable, public"


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def build(root: Path, requirements: list[str], dependencies: bool = False) -> Path:
    """root/files/*.whl (pip download of the requirements, with their dependencies when asked, wheels only, for
    this python) and root/simple/<project>/index.html; returns root."""
    files = root / "files"
    files.mkdir(parents=True, exist_ok=True)
    for requirement in dict.fromkeys(requirements):  # one at a time: two versions of a package may be asked for
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary", ":all:",
                        *([] if dependencies else ["--no-deps"]), "--disable-pip-version-check", "--dest", str(files),
                        requirement], check=True)
    projects: dict[str, list[Path]] = {}
    for wheel in sorted(files.glob("*.whl")):
        projects.setdefault(normalized(wheel.name.split("-", 1)[0]), []).append(wheel)
    for project, wheels in projects.items():
        page = root / "simple" / project / "index.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        links = "".join(
            f'<a href="../../files/{html.escape(w.name)}#sha256={hashlib.sha256(w.read_bytes()).hexdigest()}">'
            f"{html.escape(w.name)}</a>\n" for w in wheels)
        page.write_text(f"<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n")
    return root
