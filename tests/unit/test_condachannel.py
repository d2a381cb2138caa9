"""hack/condachannel.py: the local conda channel, served plain, over TLS and behind auth, and installed from with
rattler (in subprocesses: py-rattler can crash at interpreter exit). The python package is made from the Debian
rootfs tarball hack/images.py caches, and pip and the converted PyPI wheels (hack/condawheels.py) come with it;
without the tarball (a fresh machine) those tests skip instead of running debootstrap for minutes."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# find_spec, not import: py-rattler only ever runs in subprocesses (it can crash at interpreter exit).
if not (importlib.util.find_spec("rattler") and importlib.util.find_spec("conda_package_handling")):
    pytest.skip("py-rattler and conda-package-handling (the dev extra) are not installed", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "hack"))

import condachannel  # noqa: E402
import condawheels  # noqa: E402
import images  # noqa: E402
from condachannel import ChannelServer, auth_file, make_tls, rattler_install  # noqa: E402
from condawheels import tiny_wheel  # noqa: E402

# The tarball images.debian_rootfs() writes (calling it would debootstrap when it is missing).
ROOTFS = images.CACHE / f"base/debian-{images.DEBIAN_SUITE}-python3-v2.tar"
needs_rootfs = pytest.mark.skipif(not ROOTFS.exists(), reason=f"{ROOTFS} not cached: python/pip packages not built "
                                  "(`python hack/images.py build base` makes it)")
HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def channel(tmp_path_factory) -> Path:
    return condachannel.build(tmp_path_factory.mktemp("kenv-cache"), python=ROOTFS.exists(),
                              rootfs=ROOTFS if ROOTFS.exists() else None)


def install(url: str, specs: list[str], prefix: Path | None, **env: str) -> subprocess.CompletedProcess[str]:
    return rattler_install(url, specs, prefix, env=env)


def installed(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_channel_has_the_packages_and_is_built_once(channel, tmp_path_factory):
    names = condachannel.packages(channel)
    assert {"kenv-greeting-1.0-0", "kenv-greeting-2.0-0", "kenv-hello-1.0-0", "kenv-pyhello-1.0-0"} <= set(names)
    if ROOTFS.exists():
        assert any(n.startswith("python-3.11.") and "-debian_" in n for n in names), names
        assert f"pip-{condachannel.PIP_VERSION}-0" in names
    repodata = channel / "noarch/repodata.json"
    before = repodata.stat().st_mtime_ns
    assert condachannel.build(channel.parent.parent, python=ROOTFS.exists(),
                              rootfs=ROOTFS if ROOTFS.exists() else None) == channel
    assert repodata.stat().st_mtime_ns == before


def test_http_install_puts_the_dependency_in_the_same_prefix(channel, tmp_path):
    with ChannelServer(channel, HOST) as server:
        assert server.url.startswith(f"http://{HOST}:")
        assert installed(install(server.url, ["kenv-hello", "kenv-greeting=1.0"], tmp_path / "env")) == [
            "kenv-greeting=1.0=0", "kenv-hello=1.0=0"]
        assert server.fetched("/noarch/kenv-hello-1.0-0.conda")
    hello = tmp_path / "env/bin/kenv-hello"
    assert os.access(hello, os.X_OK)
    out = subprocess.run([hello], capture_output=True, text=True, check=True).stdout
    assert out == "hello from kenv-hello 1.0\nhello from kenv-greeting 1.0\n"


def test_file_channel_picks_the_newest_greeting(channel, tmp_path):
    assert installed(install(channel.as_uri(), ["kenv-hello"], None)) == ["kenv-greeting=2.0=0", "kenv-hello=1.0=0"]


def test_unknown_package_is_a_solver_error(channel):
    with ChannelServer(channel, HOST) as server:
        result = install(server.url, ["kenv-no-such-package"], None)
    assert result.returncode == 1
    assert "SolverError" in result.stderr and "No candidates were found for kenv-no-such-package" in result.stderr


def test_https_with_a_throwaway_ca(channel, tmp_path):
    tls = make_tls(tmp_path / "tls", HOST)
    with ChannelServer(channel, HOST, tls=tls) as server:
        assert server.url.startswith("https://")
        assert installed(install(server.url, ["kenv-hello"], tmp_path / "env", SSL_CERT_FILE=str(tls.ca)))
        assert server.fetched("kenv-hello-1.0-0.conda")
        untrusted = install(server.url, ["kenv-hello"], None, SSL_CERT_FILE="/etc/ssl/certs/ca-certificates.crt")
    assert untrusted.returncode == 1 and "UnknownIssuer" in untrusted.stderr


def test_basic_auth_from_rattler_auth_file(channel, tmp_path):
    with ChannelServer(channel, HOST, user="u", password="p") as server:
        anonymous = install(server.url, ["kenv-hello"], None)
        assert anonymous.returncode == 1 and "401" in anonymous.stderr
        # rattler keys credentials by host without the port
        good = auth_file(tmp_path / "auth.json", HOST, user="u", password="p")
        assert installed(install(server.url, ["kenv-hello"], tmp_path / "env", RATTLER_AUTH_FILE=str(good)))
        assert server.fetched("kenv-hello-1.0-0.conda", user="u")
        wrong = auth_file(tmp_path / "wrong.json", HOST, user="u", password="not-p")
        refused = install(server.url, ["kenv-hello"], None, RATTLER_AUTH_FILE=str(wrong))
        assert refused.returncode == 1 and "401 Unauthorized" in refused.stderr
    assert any(r.status == 401 for r in server.requests)
    assert all(r.user in (None, "u") for r in server.requests)


def test_bearer_token(channel, tmp_path):
    with ChannelServer(channel, HOST, token="t0ken") as server:
        credentials = auth_file(tmp_path / "auth.json", HOST, token="t0ken")
        assert installed(install(server.url, ["kenv-hello"], tmp_path / "env", RATTLER_AUTH_FILE=str(credentials)))
        assert server.fetched("kenv-hello-1.0-0.conda", user="<token>")


def test_server_never_binds_every_interface(channel):
    for host in ("0.0.0.0", "", "::"):
        with pytest.raises(ValueError):
            ChannelServer(channel, host)


@needs_rootfs
def test_python_prefix_runs_pip_and_imports_conda_and_pip_packages(channel, tmp_path):
    prefix = tmp_path / "opt/kenv/env"
    with ChannelServer(channel, HOST) as server:
        records = installed(install(server.url, ["kenv-hello", "python", "pip", "kenv-pyhello"], prefix))
    assert {r.split("=")[0] for r in records} == {"kenv-greeting", "kenv-hello", "kenv-pyhello", "pip", "python"}
    python = prefix / "bin/python"
    env = {"PATH": os.environ["PATH"], "PIP_ROOT_USER_ACTION": "ignore", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}

    def run(*args: str | Path) -> str:
        return subprocess.run([*args], capture_output=True, text=True, check=True, env=env).stdout.strip()

    site_packages = prefix / "lib/python3.11/site-packages"
    code = "import sys, ssl, json, sysconfig, kenv_pyhello; print(sys.prefix, sysconfig.get_path('purelib'), " \
           "kenv_pyhello.hello(), sep='\\n')"
    assert run(python, "-c", code).splitlines() == [str(prefix), str(site_packages), "hello from kenv-pyhello 1.0"]
    assert run(python, "-m", "pip", "--version").startswith(f"pip {condachannel.PIP_VERSION} from {site_packages}")
    assert run(prefix / "bin/pip", "--version").startswith(f"pip {condachannel.PIP_VERSION}")
    # pip installs where conda does (and imports from there): an offline wheel stands in for PyPI.
    wheel = tiny_wheel(tmp_path)
    run(python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", wheel)
    assert (site_packages / "kenv_tiny.py").exists()
    assert run(python, "-c", "import kenv_tiny; print(kenv_tiny.ANSWER)") == "42"
    assert "hello from kenv-greeting 2.0" in run(prefix / "bin/kenv-hello")


@needs_rootfs
def test_pypi_wheels_install_as_noarch_python_packages_with_their_dependencies(channel, tmp_path):
    """requests and friends converted from PyPI's wheels: depends from the Requires-Dist that apply (not extras,
    not tqdm's Windows-only colorama), console scripts from entry_points.txt, run by the channel's python."""
    pins, prefix = dict(condawheels.WHEELS), tmp_path / "env"
    records = installed(install(channel.as_uri(), ["python", "requests", "attrs", "packaging", "six", "tqdm", "pip"],
                                prefix))
    solved = {name: version for name, version, _ in (r.split("=") for r in records)}
    assert solved.pop("pip") == condachannel.PIP_VERSION and solved.pop("python").startswith("3.11.")
    assert solved == pins  # requests pulled in urllib3, idna, certifi and charset-normalizer
    requests = json.loads((channel / "noarch/repodata.json").read_text())["packages.conda"][
        f"requests-{pins['requests']}-0.conda"]
    assert requests["noarch"] == "python" and requests["depends"][0].startswith("python >=3.")
    assert {d.split()[0] for d in requests["depends"][1:]} == {"charset-normalizer", "idna", "urllib3", "certifi"}
    python, site_packages = prefix / "bin/python", prefix / "lib/python3.11/site-packages"

    def run(*args: str | Path) -> str:
        return subprocess.run([*args], capture_output=True, text=True, check=True,
                              env={"PATH": os.environ["PATH"], "PIP_DISABLE_PIP_VERSION_CHECK": "1"}).stdout.strip()

    code = "import requests, attrs, packaging, six, tqdm; print(requests.__version__); print(requests.__file__)"
    assert run(python, "-c", code).splitlines() == [pins["requests"], str(site_packages / "requests/__init__.py")]
    assert run(prefix / "bin/tqdm", "--version") == pins["tqdm"]  # the launcher rattler wrote from info/link.json
    assert run(python, "-m", "pip", "check") == "No broken requirements found."  # the dist-infos agree
    assert (site_packages / f"six-{pins['six']}.dist-info/INSTALLER").read_text() == "conda\n"


def test_wheel_requirements_become_conda_depends():
    depends = condawheels.conda_depends(
        ["charset_normalizer<4,>=2", 'PySocks!=1.5.7,>=1.5.6; extra == "socks"', 'colorama; platform_system == '
         '"Windows"', "backports-zstd>=1.0.0; (python_version < '3.14') and extra == 'zstd'",
         "tomli>=1; python_version < '3.12'", "exceptiongroup; python_version < '3.11'"], ">=3.9, !=3.10.*", "3.11")
    assert depends == ["python >=3.9", "charset-normalizer <4,>=2", "tomli >=1"]
    assert condawheels.conda_depends([], None, "3.11") == ["python >=3.8"]
    assert condawheels.console_scripts("[console_scripts]\ntqdm = tqdm.cli:main\n[gui_scripts]\ng = g:main\n") == [
        "tqdm = tqdm.cli:main"]
