"""Azure ML's build_local(useDocker=False), for real: `kenv build --local DIR` makes a venv and pip-installs from
PyPI through this machine's TLS proxy, trusting only the CA bundle given as --ca-bundle. No cluster: this file
uses none of the operator fixtures. (Conda needs a reachable conda channel, which this machine has not: its
commands are tested against a stand-in micromamba in tests/unit/test_localbuild.py.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

SYSTEM_CA = Path("/etc/ssl/certs/ca-certificates.crt")
# What would let pip trust the proxy besides --ca-bundle, or answer without the network.
AMBIENT = ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CONDA_SSL_VERIFY", "PIP_FIND_LINKS", "PIP_NO_INDEX",
           "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "VIRTUAL_ENV")

pytestmark = pytest.mark.skipif(not SYSTEM_CA.is_file(), reason=f"needs {SYSTEM_CA}")


def write_env(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump({"apiVersion": "kenv.dev/v1alpha1", "kind": "Environment",
                                    "metadata": {"name": "local-venv"}, "spec": spec}))
    return path


def kenv_local(manifest: Path, directory: Path, ca: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in AMBIENT}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_CACHE_DIR="1", PIP_RETRIES="1")  # no pip.conf, really download
    return subprocess.run([sys.executable, "-m", "kenv.cli", "build", "-f", str(manifest), "--local", str(directory),
                           "--ca-bundle", str(ca)], capture_output=True, text=True, env=env, timeout=300)


def test_local_venv_installs_from_pypi_reruns_as_a_no_op_and_rebuilds_on_change(tmp_path):
    directory = tmp_path / "venv"
    manifest = write_env(tmp_path / "env.yaml", {
        "docker": {"baseImage": "python:3.11-slim-bookworm"},
        "pip": {"packages": ["six==1.16.0"]},
        "environmentVariables": {"GREETING": "hello 'world'"},
    })
    result = kenv_local(manifest, directory, SYSTEM_CA)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Successfully installed six-1.16.0" in result.stderr
    assert f"source {directory}/.kenv/activate.sh" in result.stdout
    python = directory / "bin" / "python"
    imported = subprocess.run([str(python), "-c", "import six, sys; print(six.__version__, sys.prefix)"],
                              capture_output=True, text=True, check=True)
    assert imported.stdout.split() == ["1.16.0", str(directory)]
    activated = subprocess.run(["/bin/sh", "-c", f'. "{directory}/.kenv/activate.sh" && '
                                'printf "%s|%s|" "$GREETING" "$KENV_PYTHON" && python -c "import six"'],
                               capture_output=True, text=True, check=True)
    assert activated.stdout == f"hello 'world'|{python}|"
    state = json.loads((directory / ".kenv/state.json").read_text())

    rerun = kenv_local(manifest, directory, SYSTEM_CA)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "is up to date" in rerun.stderr and "pip install" not in rerun.stderr
    assert json.loads((directory / ".kenv/state.json").read_text()) == state

    write_env(manifest, {"pip": {"packages": ["six==1.16.0", "packaging==24.1"]}})
    rebuilt = kenv_local(manifest, directory, SYSTEM_CA)
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert "building it anew" in rebuilt.stderr
    subprocess.run([str(python), "-c", "import six, packaging; assert packaging.__version__ == '24.1'"], check=True)
    assert json.loads((directory / ".kenv/state.json").read_text())["hash"] != state["hash"]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make an unrelated CA")
def test_the_ca_bundle_is_what_pip_trusts(tmp_path):
    """An unrelated CA as --ca-bundle: pip trusts it alone (PIP_CERT), so the install fails, and the half-made
    venv is removed."""
    bogus = tmp_path / "bogus-ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(bogus), "-days", "1", "-subj", "/CN=kenv-unrelated-ca"], check=True,
                   capture_output=True)
    directory = tmp_path / "venv"
    result = kenv_local(write_env(tmp_path / "env.yaml", {"pip": {"packages": ["six==1.16.0"]}}), directory, bogus)
    assert result.returncode == 2
    assert "CERTIFICATE_VERIFY_FAILED" in result.stderr
    assert "kenv: install the pip requirements failed" in result.stderr
    assert not directory.exists()
