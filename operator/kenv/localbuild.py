"""Azure ML's build_local(useDocker=False): materialise an Environment on this machine without containers.

`kenv build -f env.yaml --local DIR` installs the files the image build installs — the same rendered
requirements.txt and environment.yml, after the same validation — into a venv (pip) or a conda prefix at DIR (solved
by the image build's own installer script when kenv's python has py-rattler, else by micromamba), trusting
`--ca-bundle` through the variables the Dockerfile sets as ARGs, and writes DIR/.kenv/activate.sh, which activates
DIR and exports the Environment's variables as pods receive them.

Planning is pure (`refusal`, `notes`, `choose_interpreter`, `plan_local`, `activate_script`): it returns the
commands to run, so they are unit-tested without pip or micromamba. `build_local` is the thin runner around it.
DIR/.kenv/state.json records what was installed (a hash of the files used and of the interpreter): a re-run
with the same content does nothing, a change removes DIR and builds it anew. A directory that kenv did not
create is never removed: DIR must be absent, empty or an earlier `kenv build --local` result.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

from kenv.models import EnvironmentSpec, PipInstaller
from kenv.render import (
    CA_FILE,
    CA_VARIABLES,
    INSTALLER_SCRIPT,
    BuildContext,
    Externals,
    content_hash,
    installer_script,
    render_context,
)

# Bump when what a local build installs changes for the same files: every DIR is rebuilt on its next run.
LOCAL_RECIPE_VERSION = "1"
META_DIR = ".kenv"
STATE_FILE = "state.json"
ACTIVATE_FILE = "activate.sh"
PIP_INSTALL = ("-m", "pip", "install", "--disable-pip-version-check", "-r")
MICROMAMBA_HELP = (
    "install micromamba (https://mamba.readthedocs.io/en/latest/installation/micromamba-installation.html, "
    "e.g. `\"${SHELL}\" <(curl -L micro.mamba.pm/install.sh)` or `brew install micromamba`) and put it on PATH, "
    "or pass --micromamba PATH"
)
PYTHON_NAME = re.compile(r"^python3(\.[0-9]+)?$")
# Prints the base interpreter (a venv's python resolves to the one it was made from), its version and whether
# it can make venvs (Debian ships `venv`/`ensurepip` separately, as python3.X-venv).
PROBE = (
    "import os, sys\n"
    "try:\n    import ensurepip, venv\n    ok = 1\nexcept ImportError:\n    ok = 0\n"
    "print(os.path.realpath(getattr(sys, '_base_executable', None) or sys.executable))\n"
    "print(*sys.version_info[:3])\nprint(ok)\n"
)

Kind = Literal["venv", "conda"]


class LocalBuildError(Exception):
    """What cannot be materialised here, or a step that failed; one line for the user."""


@dataclass(frozen=True)
class Interpreter:
    path: str
    version: tuple[int, int, int]
    has_venv: bool = True

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))

    def describe(self) -> str:
        return f"python {self.version_text} at {self.path}"


@dataclass(frozen=True)
class Step:
    description: str
    argv: tuple[str, ...]


@dataclass(frozen=True)
class LocalPlan:
    kind: Kind
    directory: Path
    steps: tuple[Step, ...]
    env: Mapping[str, str]  # set for every step, over the caller's environment (the CA, as the Dockerfile's ARGs)
    staged: Mapping[str, str]  # files written into the staging directory the steps read (incl. the CA bundle)
    kept: Mapping[str, str]  # rendered files kept in DIR/.kenv for reference (never the CA bundle)
    hash: str  # what was installed: a re-run with the same hash is a no-op
    image_tag: str  # the image the cluster builds from the same spec
    python: str  # interpreter description for the messages
    activate: str  # text of DIR/.kenv/activate.sh
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def meta(self) -> Path:
        return self.directory / META_DIR

    @property
    def state(self) -> dict[str, str]:
        return {"hash": self.hash, "kind": self.kind, "python": self.python, "imageTag": self.image_tag,
                "recipe": LOCAL_RECIPE_VERSION}


# --- planning (pure) ---------------------------------------------------------------------------------------------


def refusal(spec: EnvironmentSpec) -> str | None:
    """Why this spec cannot be materialised without containers (naming the field), or None."""
    if spec.docker.dockerfile or spec.docker.dockerfile_from:
        name = "spec.docker.dockerfile" if spec.docker.dockerfile else "spec.docker.dockerfileFrom"
        return (f"{name}: a Dockerfile needs a container build and cannot be materialised locally; "
                "drop --local to build the image (`kenv build -f FILE`)")
    if spec.python.user_managed_dependencies:
        return ("spec.python.userManagedDependencies is true: kenv installs nothing for this Environment (the "
                "base image is used as is), so there is no local environment to create; use your own python")
    return None


def uses_conda_locally(spec: EnvironmentSpec, micromamba_requested: bool) -> bool:
    """spec.conda always needs micromamba. python.version alone (the cluster solves just python with conda)
    is a venv of a matching local python, unless --micromamba asks for the cluster's way."""
    return spec.conda is not None or (spec.python.version is not None and micromamba_requested)


def version_matches(wanted: str, version: tuple[int, int, int]) -> bool:
    """`3.11` matches 3.11.x, `3.11.7` only itself, `3` any 3.x: the spec's components are a prefix."""
    parts = tuple(int(part) for part in wanted.split("."))
    return version[: len(parts)] == parts


def choose_interpreter(wanted: str | None, found: Sequence[Interpreter], explicit: bool = False) -> Interpreter:
    """The python the venv is made from: the first found (the explicit --python comes first) that can make
    venvs and matches spec.python.version when the spec has one."""
    usable = [i for i in found if i.has_venv]
    if explicit and found:
        chosen = found[0]
        if not chosen.has_venv:
            raise LocalBuildError(f"--python {chosen.path} cannot create venvs (no venv/ensurepip module; on "
                                  f"Debian/Ubuntu: apt install python{chosen.version[0]}.{chosen.version[1]}-venv)")
        if wanted and not version_matches(wanted, chosen.version):
            raise LocalBuildError(f"spec.python.version is {wanted} but --python {chosen.path} is python "
                                  f"{chosen.version_text}")
        return chosen
    matching = [i for i in usable if wanted is None or version_matches(wanted, i.version)]
    if matching:
        return matching[0]
    listing = ", ".join(i.describe() + ("" if i.has_venv else " (no venv module)") for i in found) or "none"
    if wanted is None:
        raise LocalBuildError(f"no python that can create venvs was found (found: {listing}); pass --python PATH")
    raise LocalBuildError(
        f"spec.python.version is {wanted} but no local python {wanted} can create a venv here (found: {listing}); "
        f"install python {wanted} (e.g. `pyenv install {wanted}`), pass --python PATH to one, or pass "
        f"--micromamba PATH to have micromamba solve python {wanted} as the cluster does"
    )


def ca_environment(ca_path: Path | None) -> dict[str, str]:
    """The variables the Dockerfile sets as ARGs when a CA bundle is configured, pointing at the local copy."""
    return {name: str(ca_path) for name in CA_VARIABLES} if ca_path else {}


def secret_reminders(spec: EnvironmentSpec) -> list[str]:
    """The variables pods take from Secrets, which a local environment never gets: the user sets them."""
    lines = [f"{item.name} (Secret {item.secret_key_ref.name}, key {item.secret_key_ref.key}"
             + (", optional)" if item.secret_key_ref.optional else ")") for item in spec.secret_env]
    lines += [f"every key of Secret {item.secret_name}" + (f" as {item.prefix}<KEY>" if item.prefix else "")
              + (" (optional)" if item.optional else "") for item in spec.secret_env_from]
    return lines


def activate_script(spec: EnvironmentSpec, directory: Path, kind: Kind) -> str:
    """DIR/.kenv/activate.sh: activates DIR like the image's PATH does and exports environmentVariables, then
    KENV_PYTHON (KENV_* win over environmentVariables, as at admission). Every value is shell-quoted: the file
    only ever assigns. Secrets are never written: it warns about the required ones that are unset."""
    python = directory / "bin" / "python"
    lines = [
        f"# Written by `kenv build --local`: `source {shlex.quote(str(directory / META_DIR / ACTIVATE_FILE))}`",
        "# activates the environment with the variables pods of this Environment get (secrets excepted).",
    ]
    if kind == "venv":
        lines.append(f". {shlex.quote(str(directory / 'bin' / 'activate'))}")
    else:  # the image sets ENV PATH=/opt/kenv/env/bin:$PATH and nothing else
        lines.append(f"export PATH={shlex.quote(str(directory / 'bin'))}:\"$PATH\"")
    lines += [f"export {name}={shlex.quote(value)}" for name, value in spec.environment_variables.items()]
    lines.append(f"export KENV_PYTHON={shlex.quote(str(python))}")
    for item in spec.secret_env:
        if item.secret_key_ref.optional:
            continue
        message = (f"kenv: {item.name} is not set: pods get it from Secret {item.secret_key_ref.name} key "
                   f"{item.secret_key_ref.key}; set it yourself")
        lines.append(f"[ -n \"${{{item.name}+x}}\" ] || echo {shlex.quote(message)} >&2")
    for source in spec.secret_env_from:
        prefix = f" with prefix {source.prefix}" if source.prefix else ""
        lines.append(f"# pods also get every key of Secret {source.secret_name}{prefix}: set those yourself")
    return "\n".join(lines) + "\n"


def notes(spec: EnvironmentSpec, kind: Kind, python: str, ca_given: bool) -> list[str]:
    """What the image or the pods have that the local environment does not, said once on stderr."""
    said = []
    if spec.docker.base_image:
        said.append(f"spec.docker.baseImage ({spec.docker.base_image}) is not used locally: {python} stands in "
                    "for the image's system")
    if spec.python.interpreter_path:
        said.append(f"spec.python.interpreterPath ({spec.python.interpreter_path}) is the image's python; "
                    "locally KENV_PYTHON is the environment's bin/python")
    if spec.python.version and kind == "venv":
        said.append(f"spec.python.version {spec.python.version}: the cluster solves python with conda; locally "
                    f"a venv of {python} stands in (pass --micromamba PATH to solve it with conda)")
    if spec.build.ca_bundle and not ca_given:
        ref = spec.build.ca_bundle
        said.append(f"spec.build.caBundle names ConfigMap {ref.name} key {ref.key}: pass its content as "
                    "--ca-bundle FILE for pip/conda to trust it here")
    if spec.pip is not None and spec.pip.installer is PipInstaller.UV:
        said.append("spec.pip.installer uv: the image build installs requirements.txt with uv; here pip installs "
                    "it, which may pick other versions where the requirements leave a choice")
    if spec.bootstrap:
        said.append("spec.bootstrap runs in pods before the training command; it is not run locally")
    if spec.docker.shm_size is not None:
        said.append("spec.docker.shmSize only sizes /dev/shm in pods")
    return said


def plan_local(spec: EnvironmentSpec, context: BuildContext, directory: Path, stage: Path, *,
               interpreter: Interpreter | None = None, micromamba: str | None = None,
               rattler_python: str | None = None, ca_given: bool = False) -> LocalPlan:
    """The commands that materialise `context` (the image build's rendered files) at `directory`, reading the
    staged files from `stage`. A venv needs `interpreter`; conda needs `rattler_python` (a python with py-rattler:
    the image build's own installer script) or `micromamba`."""
    directory = directory.absolute()
    files = context.files
    requirements = files.get("requirements.txt")
    kind: Kind = "conda" if micromamba or rattler_python else "venv"
    steps: list[Step] = []
    used: dict[str, str] = {}
    if kind == "conda" and rattler_python and not micromamba:
        used["environment.yml"] = files["environment.yml"]
        used[INSTALLER_SCRIPT] = files.get(INSTALLER_SCRIPT) or installer_script()
        python = "the conda environment's python"
        identity = "rattler"
        steps.append(Step("solve and create the conda environment (py-rattler, as the image build does)",
                          (rattler_python, str(stage / INSTALLER_SCRIPT), str(stage / "environment.yml"),
                           str(directory))))
    elif kind == "conda":
        used["environment.yml"] = files["environment.yml"]
        python = "the conda environment's python"
        identity = "micromamba"
        steps.append(Step("solve and create the conda environment (micromamba)",
                          (micromamba or "micromamba", "create", "--yes", "--prefix", str(directory),
                           "--file", str(stage / "environment.yml"))))
    else:
        if interpreter is None:
            raise ValueError("a venv needs an interpreter")
        python = interpreter.describe()
        identity = f"{interpreter.path} {interpreter.version_text}"
        steps.append(Step(f"create the venv ({python})", (interpreter.path, "-m", "venv", str(directory))))
    if requirements:
        used["requirements.txt"] = requirements
        steps.append(Step("install the pip requirements",
                          (str(directory / "bin" / "python"), *PIP_INSTALL, str(stage / "requirements.txt"))))
    ca = files.get(CA_FILE) if steps[1:] or kind == "conda" else None  # the CA only serves what downloads
    staged = {**used, **({CA_FILE: ca} if ca else {})}
    local_hash = content_hash({**used, "(kind)": kind, "(python)": identity, "(recipe)": LOCAL_RECIPE_VERSION})
    return LocalPlan(
        kind=kind, directory=directory, steps=tuple(steps),
        env=ca_environment(stage / CA_FILE if ca else None), staged=staged, kept=used, hash=local_hash,
        image_tag=context.tag, python=python, activate=activate_script(spec, directory, kind),
        notes=tuple(notes(spec, kind, python, ca_given)),
    )


def activation_message(plan: LocalPlan, spec: EnvironmentSpec) -> str:
    """What `kenv build --local` prints last, on stdout."""
    script = shlex.quote(str(plan.meta / ACTIVATE_FILE))
    bare = (f". {shlex.quote(str(plan.directory / 'bin' / 'activate'))}" if plan.kind == "venv"
            else f"export PATH={shlex.quote(str(plan.directory / 'bin'))}:\"$PATH\"")
    lines = [f"{plan.kind} ready at {plan.directory} ({plan.python}; same files as image {plan.image_tag})",
             "activate it, with the Environment's variables:", f"  source {script}",
             "or without them:", f"  {bare}"]
    reminders = secret_reminders(spec)
    if reminders:
        lines.append("secrets are never written locally; set these yourself:")
        lines += [f"  {reminder}" for reminder in reminders]
    return "\n".join(lines) + "\n"


# --- the machine (side effects) ----------------------------------------------------------------------------------


def candidate_paths(explicit: str | None = None) -> list[str]:
    """Pythons to probe, in order of preference: --python, `python3` on PATH, the one running kenv, the
    versioned `python3.X` on PATH, then pyenv's installed versions."""
    found: list[str] = [explicit] if explicit else []
    if explicit:
        return found
    on_path = shutil.which("python3")
    found += [on_path] if on_path else []
    found.append(sys.executable)
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        try:
            names = sorted((n for n in os.listdir(folder or ".") if PYTHON_NAME.match(n)), reverse=True)
        except OSError:
            continue
        found += [os.path.join(folder, name) for name in names]
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv", "versions")
    if pyenv.is_dir():
        found += [str(p) for p in sorted(pyenv.glob("*/bin/python3"), reverse=True)]
    return list(dict.fromkeys(found))


def probe(path: str) -> Interpreter | None:
    try:
        result = subprocess.run([path, "-c", PROBE], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = result.stdout.split("\n")
    if result.returncode != 0 or len(lines) < 3:
        return None
    try:
        major, minor, micro = (int(part) for part in lines[1].split())
    except ValueError:
        return None
    return Interpreter(lines[0], (major, minor, micro), lines[2].strip() == "1")


def find_interpreters(wanted: str | None, explicit: str | None = None) -> list[Interpreter]:
    """The pythons here, probed in order until one fits (all of them when none does, for the message)."""
    found: dict[str, Interpreter] = {}
    for path in candidate_paths(explicit):
        interpreter = probe(path)
        if interpreter is None or interpreter.path in found:
            continue
        found[interpreter.path] = interpreter
        if interpreter.has_venv and (wanted is None or version_matches(wanted, interpreter.version)):
            break
    if explicit and not found:
        raise LocalBuildError(f"--python {explicit} is not a python 3 interpreter that runs here")
    return list(found.values())


def rattler_available(python: str = sys.executable) -> bool:
    """Whether `python` can run the conda installer script (py-rattler and PyYAML importable)."""
    return subprocess.run([python, "-c", "import rattler, yaml"], capture_output=True).returncode == 0


def find_micromamba(explicit: str | None) -> str:
    if explicit:
        path = shutil.which(explicit)
        if path is None:
            raise LocalBuildError(f"--micromamba {explicit} is not an executable; {MICROMAMBA_HELP}")
        return path
    path = shutil.which("micromamba") or os.environ.get("MAMBA_EXE")
    if not path or not os.access(path, os.X_OK):
        raise LocalBuildError("spec.conda needs a conda installer locally: `pip install py-rattler PyYAML` into "
                              f"kenv's python (the image build's own installer), or {MICROMAMBA_HELP}")
    return path


DirectoryState = Literal["absent", "empty", "kenv", "foreign"]


def directory_state(directory: Path) -> DirectoryState:
    if not directory.exists() and not directory.is_symlink():
        return "absent"
    if not directory.is_dir() or directory.is_symlink():
        return "foreign"
    if (directory / META_DIR / STATE_FILE).is_file():
        return "kenv"
    return "empty" if not any(directory.iterdir()) else "foreign"


def read_state(directory: Path) -> dict[str, Any]:
    try:
        state = json.loads((directory / META_DIR / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def is_up_to_date(plan: LocalPlan) -> bool:
    installed = plan.directory / ("conda-meta" if plan.kind == "conda" else "bin/python")
    return (directory_state(plan.directory) == "kenv" and read_state(plan.directory).get("hash") == plan.hash
            and installed.exists())


def write_meta(plan: LocalPlan) -> None:
    plan.meta.mkdir(exist_ok=True)
    for name, content in plan.kept.items():
        (plan.meta / name).write_text(content)
    (plan.meta / ACTIVATE_FILE).write_text(plan.activate)
    (plan.meta / STATE_FILE).write_text(json.dumps(plan.state, indent=2, sort_keys=True) + "\n")


def run_steps(plan: LocalPlan, stage: Path, err: TextIO) -> None:
    for name, content in plan.staged.items():
        (stage / name).write_text(content)
    env = {**os.environ, **plan.env}
    for step in plan.steps:
        print(f"kenv: {step.description}: {shlex.join(step.argv)}", file=err, flush=True)
        try:  # their output goes to stderr: stdout is for the activation instructions
            code = subprocess.run(step.argv, env=env, stdout=2, check=False).returncode
        except OSError as error:
            raise LocalBuildError(f"{step.description}: {error}") from error
        if code != 0:
            raise LocalBuildError(f"{step.description} failed (exit code {code}); nothing half-built is left in "
                                  f"{plan.directory}")


def build_local(spec: EnvironmentSpec, context: BuildContext, directory: Path, *, python: str | None = None,
                micromamba: str | None = None, ca_given: bool = False, out: TextIO | None = None,
                err: TextIO | None = None) -> LocalPlan:
    """Materialise `context` at `directory` (a no-op when it is there already) and print how to activate it."""
    out, err = out or sys.stdout, err or sys.stderr
    reason = refusal(spec)
    if reason:
        raise LocalBuildError(reason)
    rattler_python = None
    if uses_conda_locally(spec, micromamba is not None):
        interpreter = None
        if micromamba is None and rattler_available():
            mamba, rattler_python = None, sys.executable
        else:
            mamba = find_micromamba(micromamba)
    else:
        if micromamba is not None:
            print("kenv: note: --micromamba is not used: this Environment has no conda environment", file=err)
        interpreter = choose_interpreter(spec.python.version, find_interpreters(spec.python.version, python),
                                         explicit=bool(python))
        mamba = None
    directory = directory.absolute()
    with tempfile.TemporaryDirectory(prefix="kenv-local-") as stage_dir:
        plan = plan_local(spec, context, directory, Path(stage_dir), interpreter=interpreter, micromamba=mamba,
                          rattler_python=rattler_python, ca_given=ca_given)
        for note in plan.notes:
            print(f"kenv: note: {note}", file=err)
        state = directory_state(directory)
        if state == "foreign":
            raise LocalBuildError(f"{directory} exists and is not an environment made by `kenv build --local`; "
                                  "remove it or choose another directory")
        if is_up_to_date(plan):
            print(f"kenv: {directory} is up to date (hash {plan.hash[:12]}): nothing to install", file=err)
        else:
            if state == "kenv":
                print(f"kenv: {directory} was built from other content: removing it and building it anew",
                      file=err)
                shutil.rmtree(directory)
            try:
                run_steps(plan, Path(stage_dir), err)
            except BaseException:
                remove_half_built(directory, keep_directory=state == "empty")
                raise
        write_meta(plan)  # activate.sh follows the variables, which never rebuild anything
    print(activation_message(plan, spec), end="", file=out)
    return plan


def remove_half_built(directory: Path, keep_directory: bool) -> None:
    """Never leave a half-built environment; a directory that existed (empty) before stays, emptied again."""
    if not keep_directory:
        shutil.rmtree(directory, ignore_errors=True)
        return
    for entry in directory.iterdir() if directory.is_dir() else []:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def build_local_from_args(spec: EnvironmentSpec, args: argparse.Namespace) -> int:
    """`kenv build --local DIR`: the same validation (the caller's) and rendering as the image build, then
    `build_local`."""
    if args.push:
        raise LocalBuildError("--push publishes an image; --local builds no image: drop one of them")
    reason = refusal(spec)  # before rendering: an unresolved dockerfileFrom would hide the reason
    if reason:
        raise LocalBuildError(reason)
    externals = Externals(ca_bundle=Path(args.ca_bundle).read_text() if args.ca_bundle else None)
    build_local(spec, render_context(spec, externals), Path(args.local), python=args.python,
                micromamba=args.micromamba, ca_given=bool(args.ca_bundle))
    return 0
