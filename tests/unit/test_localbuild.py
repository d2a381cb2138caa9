"""`kenv build --local DIR` (Azure ML build_local(useDocker=False)): the planned commands, the activation script,
and the runner against stand-in `python` and `micromamba` scripts (no network; tests/integration/test_local_venv.py
installs from PyPI for real). Conda cannot be run here (no conda channel is reachable), so its commands are
checked as planned and run against the stand-in micromamba."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from kenv import localbuild
from kenv.cli import main
from kenv.localbuild import (
    CA_VARIABLES,
    Interpreter,
    LocalBuildError,
    activate_script,
    choose_interpreter,
    plan_local,
    refusal,
    version_matches,
)
from kenv.models import EnvironmentSpec
from kenv.render import CA_FILE, Externals, render_context

CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
PY311 = Interpreter("/usr/bin/python3.11", (3, 11, 7))
STAGE = Path("/stage")


def spec_of(body: dict) -> EnvironmentSpec:
    return EnvironmentSpec.model_validate(body)


def plan(body: dict, directory: Path = Path("/envs/e"), ca: str | None = None, **kwargs):
    spec = spec_of(body)
    kwargs.setdefault("interpreter", PY311)
    return plan_local(spec, render_context(spec, Externals(ca_bundle=ca)), directory, STAGE, **kwargs)


def write_env(tmp_path: Path, spec: dict, name: str = "env.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"apiVersion": "kenv.dev/v1alpha1", "kind": "Environment",
                                    "metadata": {"name": "e"}, "spec": spec}))
    return path


# --- what cannot be materialised --------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "field"), [
    ({"docker": {"dockerfile": "FROM python:3.11"}}, "spec.docker.dockerfile:"),
    ({"docker": {"dockerfileFrom": {"name": "df", "key": "Dockerfile"}}}, "spec.docker.dockerfileFrom:"),
    ({"python": {"userManagedDependencies": True}}, "spec.python.userManagedDependencies"),
])
def test_refusals_name_the_field(tmp_path, capsys, body, field):
    assert field in (refusal(spec_of(body)) or "")
    # dockerfileFrom without --dockerfile: the local refusal, not "ConfigMap was not resolved"
    assert main(["build", "-f", str(write_env(tmp_path, body)), "--local", str(tmp_path / "env")]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"kenv: {field}") and error.count("\n") == 1
    assert not (tmp_path / "env").exists()


def test_dockerfile_refusal_suggests_the_image_build():
    assert "drop --local" in (refusal(spec_of({"docker": {"dockerfile": "FROM x"}})) or "")
    assert "nothing" in (refusal(spec_of({"python": {"userManagedDependencies": True}})) or "")
    assert refusal(spec_of({"docker": {"baseImage": "python:3.11"}, "pip": {"packages": ["six"]}})) is None


def test_invalid_spec_is_refused_like_the_image_build(tmp_path, capsys):
    path = write_env(tmp_path, {"pip": {"requirements": "-r other.txt\n"}})
    assert main(["build", "-f", str(path), "--local", str(tmp_path / "env")]) == 2
    assert capsys.readouterr().err.startswith("kenv: spec.pip.requirements")


def test_push_and_local_exclude_each_other_and_local_options_need_local(tmp_path, capsys):
    path = write_env(tmp_path, {"pip": {"packages": ["six"]}})
    assert main(["build", "-f", str(path), "--local", str(tmp_path / "env"), "--push"]) == 2
    assert "--push" in capsys.readouterr().err
    assert main(["build", "-f", str(path), "--python", "/usr/bin/python3"]) == 2
    assert "--local" in capsys.readouterr().err


def test_no_conda_installer_says_how_to_get_one(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("MAMBA_EXE", raising=False)
    monkeypatch.setattr(localbuild, "rattler_available", lambda python=None: False)
    path = write_env(tmp_path, {"conda": {"packages": ["numpy"]}})
    assert main(["build", "-f", str(path), "--local", str(tmp_path / "env")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("kenv: spec.conda needs a conda installer locally: `pip install py-rattler PyYAML`")
    assert "install micromamba" in error
    assert "--micromamba PATH" in error


# --- choosing the interpreter -----------------------------------------------------------------------------------


def test_version_matches_by_components():
    assert version_matches("3.11", (3, 11, 7)) and version_matches("3", (3, 9, 1))
    assert version_matches("3.11.7", (3, 11, 7)) and not version_matches("3.11.6", (3, 11, 7))
    assert not version_matches("3.1", (3, 11, 7))


def test_choose_the_first_matching_python_that_can_make_venvs():
    found = [Interpreter("/a/python3.12", (3, 12, 1)), Interpreter("/deb/python3.10", (3, 10, 2), has_venv=False),
             Interpreter("/b/python3.10", (3, 10, 13))]
    assert choose_interpreter("3.10", found).path == "/b/python3.10"
    assert choose_interpreter(None, found).path == "/a/python3.12"


def test_no_matching_python_is_refused_naming_the_field_and_what_exists():
    found = [Interpreter("/a/python3.12", (3, 12, 1)), Interpreter("/deb/python3.9", (3, 9, 2), has_venv=False)]
    with pytest.raises(LocalBuildError) as error:
        choose_interpreter("3.9", found)
    message = str(error.value)
    assert message.startswith("spec.python.version is 3.9")
    assert "python 3.12.1 at /a/python3.12" in message and "3.9.2 at /deb/python3.9 (no venv module)" in message
    assert "--python PATH" in message and "--micromamba PATH" in message


def test_explicit_python_must_match_the_version():
    with pytest.raises(LocalBuildError, match="spec.python.version is 3.12 but --python /usr/bin/python3.11"):
        choose_interpreter("3.12", [PY311], explicit=True)
    assert choose_interpreter("3.11", [PY311], explicit=True) == PY311
    with pytest.raises(LocalBuildError, match="python3.11-venv"):
        choose_interpreter(None, [Interpreter("/usr/bin/python3.11", (3, 11, 2), has_venv=False)], explicit=True)


def test_the_python_running_kenv_is_found():
    found = localbuild.find_interpreters(None)
    assert found and found[-1].has_venv


# --- the planned commands ---------------------------------------------------------------------------------------


def test_pip_plan_is_a_venv_then_pip_install_of_the_rendered_requirements():
    body = {"docker": {"baseImage": "python:3.11"},
            "pip": {"requirements": "numpy==1.26.4   # pinned\n\n", "packages": ["six==1.16.0"],
                    "indexUrl": "https://pypi.example/simple"}}
    planned = plan(body)
    assert planned.kind == "venv"
    assert [step.argv for step in planned.steps] == [
        ("/usr/bin/python3.11", "-m", "venv", "/envs/e"),
        ("/envs/e/bin/python", "-m", "pip", "install", "--disable-pip-version-check", "-r",
         "/stage/requirements.txt"),
    ]
    spec = spec_of(body)
    assert planned.kept == {"requirements.txt": render_context(spec).files["requirements.txt"]}
    assert planned.staged == planned.kept and planned.env == {}
    assert planned.image_tag == render_context(spec).tag
    assert any("spec.docker.baseImage (python:3.11) is not used locally" in note for note in planned.notes)


def test_ca_bundle_is_staged_and_set_like_the_dockerfile_args():
    planned = plan({"pip": {"packages": ["six"]}}, ca=CA)
    assert planned.staged[CA_FILE] == CA and CA_FILE not in planned.kept
    assert planned.env == {name: "/stage/kenv-ca.crt" for name in CA_VARIABLES}
    dockerfile = render_context(spec_of({"pip": {"packages": ["six"]}}), Externals(ca_bundle=CA)).files["Dockerfile"]
    assert all(f"ARG {name}=" in dockerfile for name in CA_VARIABLES)  # the same four the image build sets


def test_conda_plan_is_micromamba_create_from_the_rendered_file_then_pip():
    body = {"python": {"version": "3.11"}, "conda": {"packages": ["numpy=1.26"], "pipPackages": ["rich"]},
            "pip": {"packages": ["six==1.16.0"]}}
    planned = plan(body, ca=CA, interpreter=None, micromamba="/opt/mm")
    assert planned.kind == "conda"
    assert [step.argv for step in planned.steps] == [
        ("/opt/mm", "create", "--yes", "--prefix", "/envs/e", "--file", "/stage/environment.yml"),
        ("/envs/e/bin/python", "-m", "pip", "install", "--disable-pip-version-check", "-r",
         "/stage/requirements.txt"),
    ]
    files = render_context(spec_of(body)).files
    assert planned.kept == {"environment.yml": files["environment.yml"], "requirements.txt": files["requirements.txt"]}
    assert planned.env["CONDA_SSL_VERIFY"] == "/stage/kenv-ca.crt"
    # an image build with the micromamba installer runs the same command on the same file
    dockerfile = render_context(spec_of(body), Externals(conda_installer="micromamba")).files["Dockerfile"]
    assert "micromamba create --yes --prefix /opt/kenv/env --file /tmp/kenv/environment.yml" in dockerfile


def test_conda_plan_with_rattler_runs_the_image_builds_installer_script():
    body = {"conda": {"packages": ["numpy=1.26"], "pipPackages": ["rich"]}}
    files = render_context(spec_of(body)).files
    planned = plan(body, interpreter=None, rattler_python="/usr/bin/python3")
    assert planned.kind == "conda"
    assert [step.argv for step in planned.steps] == [
        ("/usr/bin/python3", "/stage/kenv-conda.py", "/stage/environment.yml", "/envs/e")]
    assert planned.staged["kenv-conda.py"] == files["kenv-conda.py"]
    # the image build runs the same script; its pip list then goes in the image (wheels for the base's glibc)
    assert ("RUN python3 /tmp/kenv/kenv-conda.py --no-pip $KENV_CONDA_CACHE --glibc 2.28 /tmp/kenv/environment.yml "
            "/opt/kenv/env"
            in files["Dockerfile"])
    assert files["conda-requirements.txt"] == "rich\n"


def test_python_version_alone_is_a_matching_venv_unless_micromamba_is_asked_for():
    spec = spec_of({"python": {"version": "3.11"}, "pip": {"packages": ["six"]}})
    assert not localbuild.uses_conda_locally(spec, micromamba_requested=False)
    assert localbuild.uses_conda_locally(spec, micromamba_requested=True)
    assert localbuild.uses_conda_locally(spec_of({"conda": {"packages": ["numpy"]}}), micromamba_requested=False)
    planned = plan({"python": {"version": "3.11"}, "pip": {"packages": ["six"]}})
    assert planned.kind == "venv" and any("spec.python.version 3.11" in note for note in planned.notes)


def test_nothing_to_install_is_a_bare_venv():
    planned = plan({"environmentVariables": {"A": "1"}}, ca=CA)
    assert [step.argv[1:3] for step in planned.steps] == [("-m", "venv")]
    assert planned.staged == {} and planned.env == {}


@pytest.mark.parametrize("changed", [
    {"pip": {"packages": ["six==1.17.0"]}},
    {"pip": {"packages": ["six==1.16.0", "packaging"]}},
])
def test_the_hash_moves_with_what_is_installed(changed):
    assert plan({"pip": {"packages": ["six==1.16.0"]}}).hash != plan(changed).hash


def test_the_hash_moves_with_the_interpreter_not_with_variables_ca_or_base_image():
    base = plan({"pip": {"packages": ["six==1.16.0"]}})
    same = plan({"pip": {"packages": ["six==1.16.0"]}, "environmentVariables": {"A": "1"},
                 "docker": {"baseImage": "python:3.12"}}, ca=CA)
    assert same.hash == base.hash and same.activate != base.activate
    other = plan({"pip": {"packages": ["six==1.16.0"]}}, interpreter=Interpreter("/usr/bin/python3.12", (3, 12, 1)))
    assert other.hash != base.hash


def test_notes_for_what_pods_have_and_the_local_environment_does_not():
    planned = plan({"pip": {"packages": ["six"]}, "python": {"interpreterPath": "/opt/py/bin/python"},
                    "bootstrap": {"script": "echo hi"}, "docker": {"shmSize": "1Gi"},
                    "build": {"caBundle": {"name": "proxy-ca", "key": "ca.crt"}}})
    text = "\n".join(planned.notes)
    assert "spec.python.interpreterPath" in text and "spec.bootstrap" in text and "spec.docker.shmSize" in text
    assert "ConfigMap proxy-ca key ca.crt" in text and "--ca-bundle FILE" in text
    assert not any("caBundle" in note for note in plan({"pip": {"packages": ["six"]}, "build": {
        "caBundle": {"name": "proxy-ca", "key": "ca.crt"}}}, ca_given=True).notes)
    uv = plan({"pip": {"packages": ["six"], "installer": "uv"}})
    assert any("spec.pip.installer uv" in note for note in uv.notes)
    assert uv.steps[-1].argv[1:4] == ("-m", "pip", "install")  # pip here, said so


# --- the activation script --------------------------------------------------------------------------------------


def source(script: Path, command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/sh", "-c", f'. "$0" && {command}', str(script)], capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"], **(env or {})}, check=True)


def test_activate_script_exports_the_variables_verbatim_and_warns_about_secrets(tmp_path):
    directory = tmp_path / "my env"
    (directory / "bin").mkdir(parents=True)
    (directory / "bin/activate").write_text('VIRTUAL_ENV="$(dirname "$0")"; export ACTIVATED=yes\n')
    tricky = "it's $(touch pwned) `id` \"$HOME\"\nsecond line; exit 3"
    spec = spec_of({"environmentVariables": {"TRICKY": tricky, "KENV_PYTHON": "mine", "PLAIN": "1"},
                    "secretEnv": [{"name": "TOKEN", "secretKeyRef": {"name": "s", "key": "it's"}},
                                  {"name": "MAYBE", "secretKeyRef": {"name": "s", "key": "k", "optional": True}}],
                    "secretEnvFrom": [{"secretName": "db", "prefix": "DB_"}]})
    script = tmp_path / "activate.sh"
    script.write_text(activate_script(spec, directory, "venv"))
    result = source(script, 'printf "%s|%s|%s|%s" "$ACTIVATED" "$TRICKY" "$PLAIN" "$KENV_PYTHON"', {"HOME": "/h"})
    assert result.stdout == f"yes|{tricky}|1|{directory}/bin/python"  # KENV_* wins, as at admission
    assert not Path("pwned").exists() and not (tmp_path / "pwned").exists()
    assert result.stderr == "kenv: TOKEN is not set: pods get it from Secret s key it's; set it yourself\n"
    assert source(script, "true", {"TOKEN": "x"}).stderr == ""
    assert "Secret db with prefix DB_" in script.read_text()


def test_conda_activation_puts_the_prefix_first_on_path_like_the_image(tmp_path):
    script = tmp_path / "activate.sh"
    script.write_text(activate_script(spec_of({"conda": {"packages": ["numpy"]}}), tmp_path / "c", "conda"))
    assert source(script, 'printf %s "$PATH"').stdout.startswith(f"{tmp_path}/c/bin:")


# --- the runner, against stand-in python and micromamba ---------------------------------------------------------

FAKE_PYTHON = """#!/bin/sh
# Stand-in python: `-m venv DIR` makes DIR/bin/python (this script); `-m pip install ... -r FILE` records FILE and
# the CA it was given in the environment it belongs to; a requirement named `broken` fails the install.
if [ "$1 $2" = "-m venv" ]; then
  mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && touch "$3/bin/activate" && exit 0
fi
if [ "$1 $2" = "-m pip" ]; then
  for last; do :; done
  prefix=$(dirname "$(dirname "$0")")
  grep -q broken "$last" && exit 3
  cat "$last" >> "$prefix/installed.txt"
  cat "${PIP_CERT:-/dev/null}" > "$prefix/pip-ca"
  exit 0
fi
exit 1
"""
FAKE_MICROMAMBA = """#!/bin/sh
# Stand-in micromamba: `create --yes --prefix DIR --file FILE`; refuses a non-empty non-conda folder like it.
[ "$1 $2 $3" = "create --yes --prefix" ] && [ "$5" = "--file" ] || exit 1
if [ -d "$4" ] && [ -n "$(ls -A "$4")" ] && [ ! -d "$4/conda-meta" ]; then
  echo "Non-conda folder exists at prefix - aborting." >&2; exit 1
fi
mkdir -p "$4/conda-meta" "$4/bin" && cp "$6" "$4/solved.yml" && cp "$(dirname "$0")/python" "$4/bin/python"
cat "${CONDA_SSL_VERIFY:-/dev/null}" > "$4/conda-ca"
"""


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def fake_python(tmp_path, monkeypatch):
    tools = tmp_path / "tools"
    tools.mkdir()
    python = executable(tools / "python", FAKE_PYTHON)
    interpreter = Interpreter(str(python), (3, 11, 7))
    monkeypatch.setattr(localbuild, "find_interpreters", lambda wanted, explicit=None: [interpreter])
    return python


def build(tmp_path: Path, spec: dict, *extra: str) -> int:
    return main(["build", "-f", str(write_env(tmp_path, spec)), "--local", str(tmp_path / "env"), *extra])


def test_build_rerun_and_rebuild(tmp_path, fake_python, capsys, monkeypatch):
    for name in CA_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    ca = tmp_path / "ca.pem"
    ca.write_text(CA)
    spec = {"pip": {"packages": ["six==1.16.0"]}, "environmentVariables": {"A": "1"}}
    directory = tmp_path / "env"
    assert build(tmp_path, spec, "--ca-bundle", str(ca)) == 0
    captured = capsys.readouterr()
    assert (directory / "installed.txt").read_text() == "six==1.16.0\n"
    assert (directory / "pip-ca").read_text() == CA  # PIP_CERT pointed at the bundle during the install
    assert (directory / ".kenv/requirements.txt").read_text() == "six==1.16.0\n"
    assert not (directory / ".kenv" / CA_FILE).exists()
    state = json.loads((directory / ".kenv/state.json").read_text())
    assert state["kind"] == "venv" and state["imageTag"].startswith("kenv-")
    assert f"source {directory}/.kenv/activate.sh" in captured.out
    assert f". {directory}/bin/activate" in captured.out
    assert "install the pip requirements" in captured.err

    (directory / "kept").touch()
    assert build(tmp_path, {**spec, "environmentVariables": {"A": "2"}}, "--ca-bundle", str(ca)) == 0
    assert "is up to date" in capsys.readouterr().err
    assert (directory / "kept").exists() and (directory / "installed.txt").read_text() == "six==1.16.0\n"
    assert "export A=2" in (directory / ".kenv/activate.sh").read_text()  # variables follow without a rebuild

    assert build(tmp_path, {"pip": {"packages": ["six==1.17.0"]}}) == 0
    assert "building it anew" in capsys.readouterr().err
    assert not (directory / "kept").exists() and (directory / "installed.txt").read_text() == "six==1.17.0\n"
    assert (directory / "pip-ca").read_text() == ""  # no --ca-bundle this time: no CA variables set

    (directory / "bin/python").unlink()  # a broken environment is rebuilt even with the same content
    assert build(tmp_path, {"pip": {"packages": ["six==1.17.0"]}}) == 0
    assert (directory / "bin/python").exists()


def test_a_failed_install_leaves_nothing_behind(tmp_path, fake_python, capsys):
    assert build(tmp_path, {"pip": {"packages": ["broken==1"]}}) == 2
    error = capsys.readouterr().err
    assert "kenv: install the pip requirements failed (exit code 3)" in error
    assert "nothing half-built is left in" in error
    assert not (tmp_path / "env").exists()


def test_a_failed_install_into_an_existing_empty_directory_keeps_the_directory(tmp_path, fake_python, capsys):
    (tmp_path / "env").mkdir()
    assert build(tmp_path, {"pip": {"packages": ["broken==1"]}}) == 2
    assert (tmp_path / "env").is_dir() and not list((tmp_path / "env").iterdir())


def test_a_directory_kenv_did_not_make_is_never_touched(tmp_path, fake_python, capsys):
    (tmp_path / "env").mkdir()
    (tmp_path / "env/notes.txt").write_text("mine")
    assert build(tmp_path, {"pip": {"packages": ["six"]}}) == 2
    assert "is not an environment made by `kenv build --local`" in capsys.readouterr().err
    assert (tmp_path / "env/notes.txt").read_text() == "mine"
    (tmp_path / "env/notes.txt").unlink()
    assert build(tmp_path, {"pip": {"packages": ["six"]}}) == 0  # an empty directory is fine


def test_conda_build_with_micromamba(tmp_path, fake_python, capsys):
    micromamba = executable(fake_python.parent / "micromamba", FAKE_MICROMAMBA)
    ca = tmp_path / "ca.pem"
    ca.write_text(CA)
    spec = {"conda": {"channels": ["pytorch"], "packages": ["numpy=1.26"]}, "pip": {"packages": ["six==1.16.0"]},
            "environmentVariables": {"A": "1"}}
    assert build(tmp_path, spec, "--micromamba", str(micromamba), "--ca-bundle", str(ca)) == 0
    captured = capsys.readouterr()
    directory = tmp_path / "env"
    rendered = render_context(spec_of(spec)).files
    assert (directory / "solved.yml").read_text() == rendered["environment.yml"]
    assert (directory / ".kenv/environment.yml").read_text() == rendered["environment.yml"]
    assert (directory / "conda-ca").read_text() == CA and (directory / "pip-ca").read_text() == CA
    assert (directory / "installed.txt").read_text() == "six==1.16.0\n"
    assert f'export PATH={directory}/bin:"$PATH"' in captured.out
    assert build(tmp_path, spec, "--micromamba", str(micromamba), "--ca-bundle", str(ca)) == 0
    assert "is up to date" in capsys.readouterr().err
    # a changed conda package rebuilds: micromamba gets an absent prefix again (it refuses non-conda folders)
    assert build(tmp_path, {**spec, "conda": {"packages": ["numpy=2.0"]}}, "--micromamba", str(micromamba)) == 0
    assert "numpy=2.0" in (directory / "solved.yml").read_text()


def test_python_version_with_micromamba_solves_python_with_conda(tmp_path, fake_python, capsys):
    micromamba = executable(fake_python.parent / "micromamba", FAKE_MICROMAMBA)
    assert build(tmp_path, {"python": {"version": "3.11"}}, "--micromamba", str(micromamba)) == 0
    assert "python=3.11" in (tmp_path / "env/solved.yml").read_text()
    capsys.readouterr()
