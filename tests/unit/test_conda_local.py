"""kenv's conda installer script and `kenv build --local` run for real against the local channel
(hack/condachannel.py, over file://): the same script, on the same rendered environment.yml, as in the image build
(tests/integration/test_conda.py runs it in Kaniko pods). py-rattler runs in subprocesses only."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

if not importlib.util.find_spec("rattler"):
    pytest.skip("py-rattler (the dev extra) is not installed", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "hack"))

import condachannel  # noqa: E402
import images  # noqa: E402
from condachannel import ChannelServer  # noqa: E402
from condawheels import tiny_wheel  # noqa: E402
from kenv import conda_installer, delta_script, incremental, render  # noqa: E402
from kenv.cli import main  # noqa: E402

ROOTFS = images.CACHE / f"base/debian-{images.DEBIAN_SUITE}-python3-v2.tar"
needs_python = pytest.mark.skipif(not ROOTFS.exists(), reason=f"{ROOTFS} not cached: the channel has no python "
                                  "(`python hack/images.py build base` makes it)")


@pytest.fixture(scope="module")
def channel(tmp_path_factory) -> str:
    folder = condachannel.build(tmp_path_factory.mktemp("kenv-cache"), python=ROOTFS.exists(),
                                rootfs=ROOTFS if ROOTFS.exists() else None)
    return folder.as_uri()


def run_installer(environment: dict, folder: Path) -> subprocess.CompletedProcess[str]:
    path = folder / "environment.yml"
    path.write_text(yaml.safe_dump(environment))
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_ROOT_USER_ACTION": "ignore"}
    return subprocess.run([sys.executable, conda_installer.__file__, str(path), str(folder / "env")],
                          capture_output=True, text=True, env=env, timeout=300)


@needs_python
def test_installer_solves_installs_and_runs_the_pip_list_with_the_environments_python(channel, tmp_path):
    result = run_installer({"channels": [channel], "dependencies": [
        "python=3.11", "kenv-pyhello", "kenv-hello", {"pip": [str(tiny_wheel(tmp_path))]}]}, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"kenv: conda environment {tmp_path / 'env'}: ")
    # pip came with python, as conda adds it (add_pip_as_python_dependency)
    assert {line.split("=")[0].removeprefix("kenv:   ") for line in lines if line.startswith("kenv:   ")} == {
        "kenv-greeting", "kenv-hello", "kenv-pyhello", "pip", "python"}
    python = tmp_path / "env/bin/python"
    code = "import kenv_pyhello, kenv_tiny; print(kenv_pyhello.hello(), kenv_tiny.__file__)"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[-1] == str(tmp_path / "env/lib/python3.11/site-packages/kenv_tiny.py")


def test_installer_failures_are_one_line_without_a_traceback(channel, tmp_path):
    cases = {
        "missing": ({"channels": [channel], "dependencies": ["kenv-nothere"]},
                    "kenv: conda solve failed (SolverError): Cannot solve the request because of: No candidates "
                    "were found for kenv-nothere"),
        "no-python": ({"channels": [channel], "dependencies": ["kenv-hello", {"pip": ["six"]}]},
                      "kenv: the conda environment has no python"),
        "bad-spec": ({"channels": [channel], "dependencies": ["kenv-hello >=>1"]},
                     "kenv: conda solve failed (InvalidMatchSpecError)"),
    }
    for name, (environment, expected) in cases.items():
        (tmp_path / name).mkdir()
        result = run_installer(environment, tmp_path / name)
        assert result.returncode == 1, (name, result.stderr)
        assert result.stderr.startswith(expected), (name, result.stderr)
        assert "Traceback" not in result.stderr, name


def test_kenv_build_local_uses_the_image_builds_installer(channel, tmp_path, capsys):
    manifest = tmp_path / "env.yaml"
    with ChannelServer(Path(urlparse(channel).path), "127.0.0.1") as server:  # specs name http(s) channels only
        manifest.write_text(yaml.safe_dump({"apiVersion": "kenv.dev/v1alpha1", "kind": "Environment",
                                            "metadata": {"name": "hello"}, "spec": {"conda": {
                                                "channels": [server.url, "nodefaults"], "packages": ["kenv-hello"]}}}))
        assert main(["build", "-f", str(manifest), "--local", str(tmp_path / "env")]) == 0
    out = capsys.readouterr().out
    assert f'export PATH={tmp_path / "env/bin"}:"$PATH"' in out
    hello = subprocess.run([tmp_path / "env/bin/kenv-hello"], capture_output=True, text=True, check=True).stdout
    assert hello.splitlines() == ["hello from kenv-hello 1.0", "hello from kenv-greeting 2.0"]
    assert main(["build", "-f", str(manifest), "--local", str(tmp_path / "env")]) == 0  # same content: no solve
    assert "is up to date" in capsys.readouterr().err


def conda_update(tmp_path: Path, environment: dict, added: str) -> subprocess.CompletedProcess[str]:
    """What an incremental build's pods do (incremental.py) to the environment run_installer made in tmp_path/env:
    the tools container's copy of py-rattler, then kenv-delta.py run by the environment's own python, which
    updates the prefix to the environment file with `added` and writes the change to tmp_path/out as layers."""
    prefix, tools, out = tmp_path / "env", tmp_path / "tools", tmp_path / "out"
    out.mkdir()
    subprocess.run([sys.executable, "-c", incremental.COPY_TOOLS, str(tools), "--no-cache-dir"], check=True)
    assert {"rattler", "yaml"} <= {path.name for path in tools.iterdir()}
    updated = tmp_path / "updated.yml"
    updated.write_text(yaml.safe_dump({**environment, "dependencies": [*environment["dependencies"], added]}))
    lock_script = tmp_path / "kenv-lock.py"
    lock_script.write_text(render.lock_script())
    return subprocess.run(
        [prefix / "bin/python", delta_script.__file__, f"--out={out}", f"--lock-script={lock_script}",
         "--pip-cache=--no-cache-dir", f"--conda-environment={updated}", f"--conda-prefix={prefix}",
         f"--conda-installer={conda_installer.__file__}", f"--conda-tools={tools}", "--conda-option=--no-cache",
         "--", str(tmp_path / "lock.json"), str(tmp_path / "lock-fallback.json"), str(prefix)],
        capture_output=True, text=True, timeout=300)


@needs_python
def test_an_incremental_conda_update_installs_only_the_change_and_its_layer_holds_it(channel, tmp_path):
    first = {"channels": [channel], "dependencies": ["python=3.11", "kenv-hello"]}
    assert run_installer(first, tmp_path).returncode == 0
    prefix, out = tmp_path / "env", tmp_path / "out"
    greeting = next((prefix / "conda-meta").glob("kenv-greeting-*.json"))
    kept = greeting.stat().st_mtime_ns
    result = conda_update(tmp_path, first, "kenv-pyhello")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"kenv: updated {prefix}: +kenv-pyhello 1.0 " in result.stdout
    out_code = "import kenv_pyhello; print(kenv_pyhello.hello())"
    assert subprocess.run([prefix / "bin/python", "-c", out_code], capture_output=True, text=True,
                          check=True).stdout == "hello from kenv-pyhello 1.0\n"
    assert greeting.stat().st_mtime_ns == kept  # the installed packages stayed as they were
    with tarfile.open(out / "layer.tar") as layer:
        names = layer.getnames()
    site = str(prefix / "lib/python3.11/site-packages/kenv_pyhello/__init__.py").lstrip("/")
    assert site in names and any(name.endswith(".json") and "conda-meta/kenv-pyhello-1.0" in name for name in names)
    assert not any("kenv_greeting" in name or "/rattler/" in name for name in names)
    assert len(names) < 40, names  # the change, not the environment
    with tarfile.open(out / "lock.tar") as lock:
        assert lock.getnames() == [str(tmp_path / "lock.json").lstrip("/")]
    locked = json.loads((tmp_path / "lock.json").read_text())
    assert "kenv-pyhello" in json.dumps(locked)


@needs_python
def test_a_conda_update_that_changes_files_pip_installed_stops_for_a_full_build(channel, tmp_path):
    """pip installed its own kenv_pyhello over the environment (its RECORD lists the files); the conda package
    added writes the same paths: pip's record would be wrong, so the install stops and a full build follows."""
    first = {"channels": [channel], "dependencies": ["python=3.11", "kenv-hello"]}
    assert run_installer(first, tmp_path).returncode == 0
    site = tmp_path / "env/lib/python3.11/site-packages"
    (site / "kenv_pyhello").mkdir()
    (site / "kenv_pyhello/__init__.py").write_text("def hello():\n    return 'pip'\n")
    info = site / "kenv_pyhello-0.9.dist-info"
    info.mkdir()
    (info / "INSTALLER").write_text("pip\n")
    (info / "RECORD").write_text("kenv_pyhello/__init__.py,sha256=x,40\nkenv_pyhello-0.9.dist-info/RECORD,,\n")
    result = conda_update(tmp_path, first, "kenv-pyhello")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "kenv: the conda update changed files pip installed (kenv_pyhello-0.9); a full build follows" in \
        result.stderr
    assert not (tmp_path / "out/layer.tar").exists()
