"""Solve and install a conda environment.yml into a prefix with py-rattler; run inside an image build.

This file is copied verbatim into every conda build context as `kenv-conda.py` and run by the python of the
installer stage (`python3 kenv-conda.py environment.yml /opt/kenv/env`): it imports nothing from kenv, only the
standard library, py-rattler and PyYAML, which the stage installs from PyPI unless its image has them. Its text
is part of the content hash, so a change here rebuilds conda environments, as a changed recipe should.
Usage: `kenv-conda.py ENVIRONMENT_YML PREFIX [--glibc 2.28] [--cuda 12.4] [--no-pip] [--update]`.

What it does, in order: read the rendered environment.yml (channels: see render.build_channels and solve_channels),
solve its conda dependencies for this platform and the target's virtual packages (not the build pod's), install them
into the prefix (with --update, into the environment the prefix holds: an incremental build, incremental.py; the
installed packages are preferred by the solver and rattler installs only what changed), then install the file's
`pip:` list with the environment's own python and pip (the image build
passes --no-pip and runs pip in the image itself, against the base image's glibc). Failures print one `kenv:` line
with the solver's or pip's own message (the build log's last lines reach the Environment's status) and exit 1; never
a traceback. Credentials for private channels come from a file the build Job mounts (see AUTH_FILE).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Mounted from a per-build Secret by the build Job; Kaniko never snapshots /kaniko, so it is in no layer.
AUTH_FILE = Path("/kaniko/kenv/conda/auth.json")
MESSAGE_LINES = 15  # of a solver message: the status keeps the last 20 lines of the build log


class InstallError(Exception):
    """A failure to report in one message, without a traceback."""


def split_dependencies(document: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """(channels, conda match specs, pip requirement lines of every `pip:` list) of a parsed environment file.
    kenv's renderer and import-azureml read environment files with this too."""
    channels = [str(channel) for channel in document.get("channels") or []]
    specs: list[str] = []
    pip: list[str] = []
    for dependency in document.get("dependencies") or []:
        if isinstance(dependency, dict):
            pip += [str(line).strip() for line in dependency.get("pip") or []]
        else:
            specs.append(str(dependency).strip())
    return channels, specs, pip


def read_environment(path: Path) -> tuple[list[str], list[str], list[str]]:
    """split_dependencies of an environment.yml."""
    import yaml

    return split_dependencies(yaml.safe_load(path.read_text(encoding="utf-8")) or {})


def first_lines(message: str, limit: int = MESSAGE_LINES) -> str:
    lines = [line.rstrip() for line in message.strip().splitlines() if line.strip()]
    return "\n".join(lines[:limit] + (["…"] if len(lines) > limit else []))


# conda's `defaults` is Anaconda's multichannel, not a channel named "defaults" on anaconda.org (rattler's reading).
DEFAULTS = ("https://repo.anaconda.com/pkgs/main", "https://repo.anaconda.com/pkgs/r")


@dataclass(frozen=True)
class Target:
    """What the image is solved for, rather than what the build pod happens to run on: the glibc the base image
    is assumed to have (no newer), the architecture's baseline CPU (not the build node's), a CUDA driver or none."""

    glibc: str | None = None  # None: this machine's (kenv build --local)
    cuda: str | None = None


def solve_channels(channels: list[str], specs: list[str]) -> list[str]:
    """The channels as conda reads them: `defaults` expanded, and a `channel::package` spec's channel added
    (after the listed ones) when the list lacks it, as conda and micromamba do."""
    expanded = [url for channel in channels for url in (DEFAULTS if channel == "defaults" else (channel,))]
    for spec in specs:
        prefix, separator, _ = spec.partition("::")
        if separator and prefix.strip() and prefix.strip() not in expanded:
            expanded += DEFAULTS if prefix.strip() == "defaults" else [prefix.strip()]
    return list(dict.fromkeys(expanded))


def installed_records(prefix: Path) -> list[Any]:
    """The packages the prefix holds (its conda-meta records), none for a new prefix."""
    import rattler

    meta = prefix / "conda-meta"
    return [rattler.PrefixRecord.from_path(path) for path in sorted(meta.glob("*.json"))] if meta.is_dir() else []


def transaction(installed: list[Any], records: list[Any]) -> list[str]:
    """What installing `records` over `installed` changes, as `+name version`, `-name version` lines."""
    before = {(r.name.normalized, str(r.version), r.build) for r in installed}
    after = {(r.name.normalized, str(r.version), r.build) for r in records}
    return [f"{sign}{name} {version} {build}" for sign, changed in (("-", before - after), ("+", after - before))
            for name, version, build in sorted(changed)]


async def solve_and_install(channels: list[str], specs: list[str], prefix: Path, cache: Path,
                            target: Target, installed: list[Any] | None = None) -> list[Any]:
    """Solve the specs and install the solution into the prefix. installed: the prefix's packages, which the
    solver keeps where it can (locked, not pinned: an added spec may still need another version of one)."""
    import rattler
    from rattler.networking import Client

    if AUTH_FILE.is_file():
        os.environ["RATTLER_AUTH_FILE"] = str(AUTH_FILE)
    try:
        client = Client.default_client()  # retries and the authentication middleware (RATTLER_AUTH_FILE)
        gateway = rattler.Gateway(client=client, cache_dir=cache / "repodata")
        platform = rattler.Subdir.current()
        overrides = rattler.VirtualPackageOverrides(
            libc=rattler.Override.string(target.glibc) if target.glibc else None,
            archspec=rattler.Override.string(str(platform.arch or "x86_64")),
            cuda=rattler.Override.string(target.cuda) if target.cuda else None)
        # Parsed leniently, as conda reads environment files: `numpy 1.26` is ==1.26, `numpy=1.26` is 1.26.*
        # (solve's own parsing of plain strings is strict and refuses the first).
        match_specs = [rattler.MatchSpec(spec, strict=False) for spec in specs]
        records = await rattler.solve(
            channels, match_specs, gateway=gateway, platforms=[platform, rattler.Subdir("noarch")],
            virtual_packages=rattler.VirtualPackage.detect(overrides),
            add_pip_as_python_dependency=True,  # as conda and micromamba do by default
            locked_packages=installed or None,
        )
    except Exception as error:  # rattler's SolverError, GatewayError (channel down, 401, TLS), …
        raise InstallError(f"conda solve failed ({type(error).__name__}): {first_lines(str(error))}") from None
    try:
        await rattler.install(records, target_prefix=prefix, cache_dir=cache / "pkgs", client=client,
                              show_progress=False, installed_packages=installed)
    except Exception as error:
        raise InstallError(f"conda install failed ({type(error).__name__}): {first_lines(str(error))}") from None
    return list(records)


def no_python(prefix: Path, requirements: int) -> InstallError:
    return InstallError(
        f"the conda environment has no python ({prefix / 'bin' / 'python'}), so its pip list ({requirements} "
        "requirements) cannot be installed into it: add `python` and `pip` to the conda dependencies (the "
        "channels must provide them), or move the pip packages to spec.pip to install them with the base "
        "image's python")


def install_pip(prefix: Path, requirements: list[str]) -> None:
    """The environment.yml's pip list, installed by the environment's own python, as conda itself does (the
    image build runs pip in the image instead, on conda-requirements.txt: see render.py)."""
    python = prefix / "bin" / "python"
    if not python.exists():
        raise no_python(prefix, len(requirements))
    if subprocess.run([str(python), "-m", "pip", "--version"], capture_output=True).returncode != 0:
        raise InstallError(f"the conda environment's python ({python}) has no pip: add `pip` to the conda "
                           "dependencies")
    with tempfile.TemporaryDirectory(prefix="kenv-conda-pip-") as folder:
        listing = Path(folder) / "requirements.txt"
        listing.write_text("\n".join(requirements) + "\n", encoding="utf-8")
        result = subprocess.run([str(python), "-m", "pip", "install", "--no-cache-dir",
                                 "--disable-pip-version-check", "-r", str(listing)])
    if result.returncode != 0:
        raise InstallError(f"pip install of the environment.yml's pip list failed with exit code "
                           f"{result.returncode} (pip's message is above)")


def run(environment: Path, prefix: Path, target: Target, with_pip: bool = True, cache_dir: Path | None = None,
        update: bool = False) -> None:
    channels, specs, pip = read_environment(environment)
    if not specs:
        raise InstallError(f"{environment} lists no conda dependencies, only a pip list: add python and pip to "
                           "its dependencies, or install the packages with spec.pip instead")
    channels = solve_channels(channels, specs)
    started = time.monotonic()
    installed = installed_records(prefix) if update else []
    if update and not installed:
        raise InstallError(f"{prefix} holds no conda environment to update (no conda-meta records)")
    with tempfile.TemporaryDirectory(prefix="kenv-rattler-") as scratch:
        # A cache that outlives the build (rattler locks its entries, so parallel builds may share it) or none.
        records = asyncio.run(solve_and_install(channels, specs, prefix, cache_dir or Path(scratch), target,
                                                installed))
    if update:
        changed = transaction(installed, records)
        print(f"kenv: updated {prefix}: {', '.join(changed) if changed else 'nothing changed'}", flush=True)
    print(f"kenv: conda environment {prefix}: {len(records)} packages from {', '.join(channels)} "
          f"in {time.monotonic() - started:.1f} s (solved for glibc {target.glibc or 'of this machine'}, "
          f"{'CUDA ' + target.cuda if target.cuda else 'no CUDA'})", flush=True)
    for record in sorted(records, key=lambda r: r.name.normalized):
        print(f"kenv:   {record.name.normalized}={record.version}={record.build} ({record.channel})", flush=True)
    if pip and not any(record.name.normalized == "python" for record in records):
        raise no_python(prefix, len(pip))  # said now, not after the image's pip step fails
    if pip and with_pip:
        install_pip(prefix, pip)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kenv-conda.py", description="Solve and install environment.yml.")
    parser.add_argument("environment", type=Path)
    parser.add_argument("prefix", type=Path)
    parser.add_argument("--glibc", help="the glibc to solve for (the base image's, or older); default: this one's")
    parser.add_argument("--cuda", help="the CUDA driver version to solve for (none by default)")
    parser.add_argument("--no-pip", action="store_true", help="leave the pip list to the caller")
    parser.add_argument("--update", action="store_true", help="install into the environment the prefix holds, "
                        "keeping its packages where the solve allows")
    caching = parser.add_mutually_exclusive_group()
    caching.add_argument("--cache-dir", type=Path, help="keep repodata and packages here for later builds")
    caching.add_argument("--no-cache", action="store_true", help="a temporary cache, removed at exit (default)")
    args = parser.parse_args(argv)
    try:
        run(args.environment, args.prefix, Target(args.glibc, args.cuda), with_pip=not args.no_pip,
            cache_dir=args.cache_dir, update=args.update)
    except InstallError as error:
        print(f"kenv: {error}", file=sys.stderr, flush=True)
        return 1
    except BaseException as error:  # noqa: BLE001 - a Rust panic (pyo3 PanicException) is a BaseException
        print(f"kenv: conda installer failed unexpectedly ({type(error).__name__}): {first_lines(str(error))}",
              file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # py-rattler's runtime can crash the interpreter at exit after the work is done (a known py-rattler issue,
    # ~1 run in 8 here): leave without finalisation so the build step's exit code is ours.
    os._exit(code)
