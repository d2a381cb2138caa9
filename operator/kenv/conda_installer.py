"""Solve and install a conda environment.yml into a prefix with py-rattler; run inside an image build.

This file is copied verbatim into every conda build context as `kenv-conda.py` and run by the python of the
installer stage (`python3 kenv-conda.py environment.yml /opt/kenv/env`): it imports nothing from kenv, only the
standard library, py-rattler and PyYAML, which the stage installs from PyPI unless its image has them. Its text
is part of the content hash, so a change here rebuilds conda environments, as a changed recipe should.

What it does, in order: read the rendered environment.yml (channels already final: see render.build_channels),
solve its conda dependencies for this platform and the stage's virtual packages, install them into the prefix,
then install the file's `pip:` list with the environment's own python and pip. Failures print one `kenv:` line
with the solver's or pip's own message (the build log's last lines reach the Environment's status) and exit 1;
never a traceback. Credentials for private channels come from a file the build Job mounts (see AUTH_FILE).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Mounted from a per-build Secret by the build Job; Kaniko never snapshots /kaniko, so it is in no layer.
AUTH_FILE = Path("/kaniko/kenv/conda/auth.json")
MESSAGE_LINES = 15  # of a solver message: the status keeps the last 20 lines of the build log


class InstallError(Exception):
    """A failure to report in one message, without a traceback."""


def read_environment(path: Path) -> tuple[list[str], list[str], list[str]]:
    """(channels, conda match specs, pip requirement lines) of an environment.yml."""
    import yaml

    document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    channels = [str(channel) for channel in document.get("channels") or []]
    specs: list[str] = []
    pip: list[str] = []
    for dependency in document.get("dependencies") or []:
        if isinstance(dependency, dict):
            pip += [str(line) for line in dependency.get("pip") or []]
        else:
            specs.append(str(dependency))
    return channels, specs, pip


def first_lines(message: str, limit: int = MESSAGE_LINES) -> str:
    lines = [line.rstrip() for line in message.strip().splitlines() if line.strip()]
    return "\n".join(lines[:limit] + (["…"] if len(lines) > limit else []))


async def solve_and_install(channels: list[str], specs: list[str], prefix: Path, cache: Path) -> list[Any]:
    import rattler
    from rattler.networking import Client

    if AUTH_FILE.is_file():
        os.environ["RATTLER_AUTH_FILE"] = str(AUTH_FILE)
    client = Client.default_client()  # retries and the authentication middleware (RATTLER_AUTH_FILE)
    gateway = rattler.Gateway(client=client, cache_dir=cache / "repodata")
    try:
        # Parsed leniently, as conda reads environment files: `numpy 1.26` is ==1.26, `numpy=1.26` is 1.26.*
        # (solve's own parsing of plain strings is strict and refuses the first).
        match_specs = [rattler.MatchSpec(spec, strict=False) for spec in specs]
        records = await rattler.solve(
            channels, match_specs, gateway=gateway, platforms=[rattler.Subdir.current(), rattler.Subdir("noarch")],
            virtual_packages=rattler.VirtualPackage.detect(),
            add_pip_as_python_dependency=True,  # as conda and micromamba do by default
        )
    except Exception as error:  # rattler's SolverError, GatewayError (channel down, 401, TLS), …
        raise InstallError(f"conda solve failed ({type(error).__name__}): {first_lines(str(error))}") from None
    try:
        await rattler.install(records, target_prefix=prefix, cache_dir=cache / "pkgs", client=client,
                              show_progress=False)
    except Exception as error:
        raise InstallError(f"conda install failed ({type(error).__name__}): {first_lines(str(error))}") from None
    return list(records)


def install_pip(prefix: Path, requirements: list[str]) -> None:
    """The environment.yml's pip list, installed by the environment's own python, as conda itself does."""
    python = prefix / "bin" / "python"
    if not python.exists():
        raise InstallError(
            f"the conda environment has no python ({python}), so its pip list ({len(requirements)} requirements) "
            "cannot be installed into it: add `python` and `pip` to the conda dependencies (the channels must "
            "provide them), or move the pip packages to spec.pip to install them with the base image's python")
    if subprocess.run([str(python), "-m", "pip", "--version"], capture_output=True).returncode != 0:
        raise InstallError(f"the conda environment's python ({python}) has no pip: add `pip` to the conda "
                           "dependencies")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="kenv-conda-pip-", delete=False) as handle:
        handle.write("\n".join(requirements) + "\n")
    result = subprocess.run([str(python), "-m", "pip", "install", "--no-cache-dir", "--disable-pip-version-check",
                             "-r", handle.name])
    os.unlink(handle.name)
    if result.returncode != 0:
        raise InstallError(f"pip install of the environment.yml's pip list failed with exit code "
                           f"{result.returncode} (pip's message is above)")


def run(environment: Path, prefix: Path) -> None:
    channels, specs, pip = read_environment(environment)
    if not specs:
        raise InstallError(f"{environment} lists no conda dependencies")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kenv-rattler-") as cache:
        records = asyncio.run(solve_and_install(channels, specs, prefix, Path(cache)))
    print(f"kenv: conda environment {prefix}: {len(records)} packages from {', '.join(channels)} "
          f"in {time.monotonic() - started:.1f} s", flush=True)
    for record in sorted(records, key=lambda r: r.name.normalized):
        print(f"kenv:   {record.name.normalized}={record.version}={record.build} ({record.channel})", flush=True)
    if pip:
        install_pip(prefix, pip)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: kenv-conda.py ENVIRONMENT_YML PREFIX", file=sys.stderr)
        return 2
    try:
        run(Path(argv[0]), Path(argv[1]))
    except InstallError as error:
        print(f"kenv: {error}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # py-rattler's runtime can crash the interpreter at exit after the work is done (a known py-rattler issue,
    # ~1 run in 8 here): leave without finalisation so the build step's exit code is ours.
    os._exit(code)
