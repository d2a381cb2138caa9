"""Pure-python wheels from PyPI as noarch: python conda packages, for the channel hack/condachannel.py builds.

A conda-forge noarch: python package is, in effect, the wheel installed into site-packages/: the installer moves
site-packages/ to the environment's lib/python3.X/site-packages and writes bin/ launchers for the entry points
named in info/link.json. So a wheel converts as it is:
  - its files go under site-packages/, its .dist-info included (INSTALLER says conda, as in conda-forge packages,
    so pip sees who installed it);
  - its Requires-Dist entries that apply to linux and the channel's python (no extras, no markers that are false
    there) become depends, names normalized as conda-forge names them (charset_normalizer: charset-normalizer),
    the specifiers kept (conda reads `<4,>=2` the same); python >= its Requires-Python floor (3.8 at least);
  - its console_scripts become the link.json entry points.
Only py3-none-any wheels with no .data directory (scripts, headers) are converted: the list below is such.

Only the standard library at import: serving the channel needs no dev extra (packaging is imported when used).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path

# requests 2.32.x and everything it needs, and four more with dependencies of their own that do not apply here
# (tqdm's colorama is for Windows) or none. Exact pins: the channel holds these versions only.
# charset-normalizer also ships compiled wheels; the pure py3-none-any one is the one downloaded.
WHEELS = (
    ("requests", "2.32.5"),
    ("urllib3", "2.8.0"),
    ("idna", "3.20"),
    ("certifi", "2026.10.19.post1"),
    ("charset-normalizer", "3.5.3"),
    ("attrs", "26.1.0"),
    ("packaging", "26.4"),
    ("six", "1.17.0"),
    ("tqdm", "4.70.1"),
)
PYTHON_FLOOR = "3.8"  # the lowest python a converted package depends on
# The marker environment of the channel's python (python_version and python_full_version are added per call).
LINUX_CPYTHON = {"os_name": "posix", "sys_platform": "linux", "platform_system": "Linux",
                 "platform_machine": "x86_64", "platform_python_implementation": "CPython",
                 "implementation_name": "cpython"}


@dataclass(frozen=True)
class Staged:
    """What the conda package's info/index.json and info/link.json need of a wheel staged for packing."""

    name: str  # the conda name
    version: str
    depends: list[str]
    entry_points: list[str]  # console_scripts lines: "name = module:function"
    license: str


def download(name: str, version: str, downloads: Path, python: str) -> Path:
    """The py3-none-any wheel of name==version in downloads/ (fetched from PyPI with the host's pip once)."""
    pattern = f"{name.replace('-', '_')}-{version}-*-none-any.whl"
    if found := sorted(downloads.glob(pattern)):
        return found[0]
    print(f"[condachannel] downloading {name} {version} from PyPI", file=sys.stderr, flush=True)
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="downloading.", dir=downloads) as folder:
        # The target options make pip take a pure wheel even where a compiled one would suit this host.
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", f"{name}=={version}", "--no-deps",
                        "--only-binary=:all:", "--platform", "any", "--implementation", "py", "--abi", "none",
                        "--python-version", python, "-d", folder], check=True, stdout=sys.stderr)
        wheels = list(Path(folder).glob(pattern))
        if len(wheels) != 1:
            raise RuntimeError(f"pip download {name}=={version}: expected one {pattern}, got "
                               f"{sorted(p.name for p in Path(folder).iterdir())}")
        os.replace(wheels[0], downloads / wheels[0].name)  # whole or not at all, should two builds race
    return downloads / wheels[0].name


def unpack(wheel: Path, stage: Path, python: str) -> Staged:
    """Extract wheel into stage/site-packages/ (stage emptied first) and read what the package's info/ needs."""
    shutil.rmtree(stage, ignore_errors=True)
    with zipfile.ZipFile(wheel) as whl:
        if data := sorted({n.split("/")[0] for n in whl.namelist() if n.split("/")[0].endswith(".data")}):
            raise RuntimeError(f"{wheel.name} has {data[0]}/ (scripts or headers to install elsewhere): not converted")
        whl.extractall(stage / "site-packages")
    (dist_info,) = (stage / "site-packages").glob("*.dist-info")
    (dist_info / "INSTALLER").write_text("conda\n")
    metadata = HeaderParser().parsestr((dist_info / "METADATA").read_text(encoding="utf-8"))
    entry_points = dist_info / "entry_points.txt"
    from packaging.utils import canonicalize_name

    return Staged(
        name=canonicalize_name(metadata["Name"]),
        version=metadata["Version"],
        depends=conda_depends(metadata.get_all("Requires-Dist") or [], metadata["Requires-Python"], python),
        entry_points=console_scripts(entry_points.read_text()) if entry_points.exists() else [],
        license=(metadata["License-Expression"] or metadata["License"] or "unknown").strip().splitlines()[0],
    )


def conda_depends(requires_dist: list[str], requires_python: str | None, python: str) -> list[str]:
    """python >= the wheel's floor, then each requirement that applies to linux and this python, as a match spec.
    >>> conda_depends(['charset_normalizer<4,>=2', 'PySocks>=1.5.6; extra == "socks"'], ">=3.9", "3.11")
    ['python >=3.9', 'charset-normalizer <4,>=2']"""
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    floors = [Version(s.version) for s in SpecifierSet(requires_python or "") if s.operator == ">="]
    depends = [f"python >={max([Version(PYTHON_FLOOR), *floors])}"]
    markers = {**LINUX_CPYTHON, "python_version": python, "python_full_version": f"{python}.0"}
    for line in requires_dist:
        requirement = Requirement(line)
        if requirement.marker and not requirement.marker.evaluate(markers):  # extras ("extra" is ""), Windows...
            continue
        if requirement.url:
            raise RuntimeError(f"{line!r}: a URL requirement has no conda equivalent")
        # A requirement's own extras (name[extra]) are dropped: a conda package has none.
        depends.append(f"{canonicalize_name(requirement.name)} {requirement.specifier}".rstrip())
    return depends


def console_scripts(entry_points: str) -> list[str]:
    """The [console_scripts] lines of an entry_points.txt."""
    section, scripts = "", []
    for line in entry_points.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[console_scripts]" and "=" in line:
            scripts.append(line)
    return scripts


def tiny_wheel(folder: Path) -> Path:
    """A one-module wheel (kenv_tiny, ANSWER = 42) pip installs offline: stands in for PyPI in tests."""
    wheel = folder / "kenv_tiny-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as whl:
        whl.writestr("kenv_tiny.py", "ANSWER = 42\n")
        whl.writestr("kenv_tiny-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: kenv-tiny\nVersion: 1.0\n")
        whl.writestr("kenv_tiny-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                     "Tag: py3-none-any\n")
        whl.writestr("kenv_tiny-1.0.dist-info/RECORD", "")
    return wheel
