"""Conda environments end to end on the real cluster: Kaniko build pods solve and install with py-rattler (the
installer image hack/images.py builds) from a conda channel built here (hack/condachannel.py) and served on the
node's bridge address, and training pods run in the images.

- environmentYaml: a package and its dependency land in /opt/kenv/env; a training pod finds both;
- the structured fields with the channel's python: conda's noarch python package, the pip list and spec.pip all
  go into the environment's own python;
- a conda part without python but with pip packages, a package the channel lacks and a channel that is down each
  fail the build with one `kenv:` line saying why (the solver's message), never a traceback;
- a private channel over TLS with its own CA and HTTP basic auth: a wrong password fails the build with the
  channel's 401, fixing the Secret retries it, and the packages were fetched with the credentials.
"""

from __future__ import annotations

import base64
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from condachannel import ChannelServer, build, make_tls
from kenvfixtures import (
    BUILD_NAMESPACE,
    build_pod,
    create_env,
    edit,
    env_versions,
    job_pods,
    layer_digests,
    layer_paths,
    run_pod,
    step_reused,
    wait_for,
    wait_phase,
    wait_version,
)
from nodeconfig import NODE_IP

pytestmark = pytest.mark.usefixtures("operator")

REPOSITORY = "kenv/environments"
USER, PASSWORD = "data-scientist", "s3cret-for-the-test-channel"


@pytest.fixture(scope="module")
def channel_dir(base_image: str) -> Path:
    """The channel's python is repackaged from the base image's Debian rootfs (cached by hack/images.py)."""
    return build()


@pytest.fixture(scope="module")
def channel(channel_dir: Path) -> Iterator[ChannelServer]:
    with ChannelServer(channel_dir, host=NODE_IP) as server:
        yield server


@pytest.fixture(scope="module")
def private_channel(channel_dir: Path) -> Iterator[tuple[ChannelServer, str]]:
    """The same channel behind TLS (a CA of its own, nothing else trusts it) and HTTP basic auth."""
    folder = Path(tempfile.mkdtemp(prefix="kenv-private-channel-"))
    tls = make_tls(folder, NODE_IP)
    try:
        with ChannelServer(channel_dir, host=NODE_IP, user=USER, password=PASSWORD, tls=tls) as server:
            yield server, Path(tls.ca).read_text()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def conda_env(kube: Any, namespace: str, name: str, base_image: str, conda: dict[str, Any],
              **spec: Any) -> dict[str, Any]:
    create_env(kube, namespace, name, {"docker": {"baseImage": base_image}, "conda": conda, **spec})
    return wait_phase(kube, namespace, name, {"Ready", "Failed"}, timeout=300)


def train(kube: Any, namespace: str, env: str, script: str, pod_name: str | None = None) -> str:
    pod, log = run_pod(kube, namespace, pod_name or f"train-{env}", {"containers": [
        {"name": "train", "image": "placeholder", "command": ["/bin/sh", "-c", script]}]},
        labels={"kenv.dev/environment": env})
    assert pod["status"]["phase"] == "Succeeded", log
    return log


def test_environment_yaml_installs_a_package_and_its_dependency(kube, namespace, base_image, channel):
    environment_yaml = (f"name: hello\nchannels:\n  - {channel.url}\n  - nodefaults\n"
                        "dependencies:\n  - kenv-hello\n  - kenv-greeting 1.0  # hello needs >=1.0; 2.0 exists\n")
    # No caches: the packages must come from the channel in this build (asserted below).
    env = conda_env(kube, namespace, "hello", base_image, {"environmentYaml": environment_yaml},
                    build={"cache": False})
    assert env["status"]["phase"] == "Ready", env["status"]
    log = train(kube, namespace, "hello", "command -v kenv-hello; kenv-hello; ls /opt/kenv/env/conda-meta")
    lines = log.splitlines()
    assert lines[0] == "/opt/kenv/env/bin/kenv-hello"  # the image's PATH starts with the environment
    assert "hello from kenv-greeting 1.0" in lines  # the dependency, at the pinned version, beside it
    assert {"kenv-hello-1.0-0.json", "kenv-greeting-1.0-0.json"} <= set(lines)
    # the installer's report of what it solved is kept with the version
    build_log = env_versions(kube, namespace, "hello")[0]["spec"]["buildLog"]
    assert "kenv:   kenv-greeting=1.0=0 (" in build_log and "kenv:   kenv-hello=1.0=0 (" in build_log
    assert channel.fetched("/noarch/kenv-greeting-1.0-0.conda")
    # the version's lock: the environment's conda packages with build string and channel (its python-less
    # environment is listed by the base image's python3, whose own distributions come with it)
    conda = {p["name"]: p for p in env_versions(kube, namespace, "hello")[0]["spec"]["lock"]["packages"]
             if p["manager"] == "conda"}
    assert set(conda) == {"kenv-hello", "kenv-greeting"}
    assert [(p["version"], p["build"]) for p in conda.values()] == [("1.0", "0"), ("1.0", "0")]
    assert all(channel.url.rstrip("/") in p["channel"] for p in conda.values()), conda


def test_structured_fields_install_pip_packages_into_the_channels_python(kube, namespace, base_image, channel,
                                                                        ca_config_map):
    env = conda_env(kube, namespace, "pyenv", base_image,
                    {"channels": [channel.url, "nodefaults"], "packages": ["python=3.11", "kenv-pyhello"],
                     "pipPackages": ["six==1.16.0"]},
                    pip={"packages": ["idna==3.7"]}, build={"caBundle": ca_config_map})  # PyPI via the proxy
    assert env["status"]["phase"] == "Ready", env["status"]
    script = ("import sys, idna, kenv_pyhello, six; print(sys.executable); print(kenv_pyhello.hello()); "
              "print(six.__file__); print(idna.__file__)")
    log = train(kube, namespace, "pyenv", f"command -v python; python -c '{script}'")
    which, executable, hello, six_file, idna_file = log.splitlines()
    assert which == "/opt/kenv/env/bin/python" and executable.startswith("/opt/kenv/env/bin/python")
    assert hello == "hello from kenv-pyhello 1.0"  # conda's noarch: python package
    site_packages = "/opt/kenv/env/lib/python3.11/site-packages/"
    assert six_file.startswith(site_packages) and idna_file.startswith(site_packages), log  # both pip lists
    # the lock, listed by the environment's python: conda's packages once (kenv-pyhello is a Python
    # distribution too), both pip lists' packages as pip's
    packages = env_versions(kube, namespace, "pyenv")[0]["spec"]["lock"]["packages"]
    by_manager = {(p["manager"], p["name"].lower()): p["version"] for p in packages}
    assert by_manager[("conda", "python")].startswith("3.11.") and by_manager[("conda", "kenv-pyhello")] == "1.0"
    assert by_manager[("pip", "six")] == "1.16.0" and by_manager[("pip", "idna")] == "3.7"
    assert ("pip", "kenv-pyhello") not in by_manager and ("pip", "kenv_pyhello") not in by_manager


def fetches(channel: ChannelServer, suffix: str) -> int:
    return sum(1 for r in list(channel.requests) if r.method == "GET" and r.path.endswith(suffix) and r.status == 200)


def test_an_added_pip_line_and_an_added_conda_package_are_installed_incrementally_into_the_environment(
        kube, cluster, namespace, base_image, channel, ca_config_map):
    def spec(*lines: str, conda: tuple[str, ...] = ()) -> dict[str, Any]:
        return {"docker": {"baseImage": base_image}, "build": {"caBundle": ca_config_map, "incremental": True},
                "conda": {"channels": [channel.url, "nodefaults"], "packages": ["python=3.11", *conda]},
                "pip": {"requirements": "\n".join(lines) + "\n"}}  # PyPI via the proxy
    create_env(kube, namespace, "inc-conda", spec("six==1.16.0"))
    first = wait_version(kube, namespace, "inc-conda", 1, timeout=600)["status"]
    edit(kube, namespace, "inc-conda", spec("six==1.16.0", "idna==3.7"))
    second = wait_version(kube, namespace, "inc-conda", 2, timeout=300)["status"]
    assert next(c for c in second["conditions"] if c["type"] == "Ready")["reason"] == "IncrementalBuild"
    [install] = job_pods(kube, BUILD_NAMESPACE, second["buildJob"]["name"])[-1]["spec"]["initContainers"]
    assert install["image"] == first["image"] and install["command"][0] == "/opt/kenv/env/bin/python"
    log = train(kube, namespace, "inc-conda", "python -c 'import idna, six; print(idna.__file__); print(six.__file__)'")
    site_packages = "/opt/kenv/env/lib/python3.11/site-packages/"
    assert all(line.startswith(site_packages) for line in log.strip().splitlines()[-2:]), log
    version = next(v["spec"] for v in env_versions(kube, namespace, "inc-conda") if v["spec"]["version"] == 2)
    by_manager = {(p["manager"], p["name"].lower()): p["version"] for p in version["lock"]["packages"]}
    assert by_manager[("conda", "python")].startswith("3.11.") and by_manager[("pip", "idna")] == "3.7"
    assert by_manager[("pip", "six")] == "1.16.0"

    # A conda package added: the tools container copies py-rattler out of the conda installer image, and the
    # environment's python updates the prefix in version 2's image with it; only the new package is installed.
    edit(kube, namespace, "inc-conda", spec("six==1.16.0", "idna==3.7", conda=("kenv-pyhello",)))
    third = wait_version(kube, namespace, "inc-conda", 3, timeout=300)["status"]
    assert next(c for c in third["conditions"] if c["type"] == "Ready")["reason"] == "IncrementalBuild"
    pod = job_pods(kube, BUILD_NAMESPACE, third["buildJob"]["name"])[-1]
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["tools", "install"]
    assert pod["spec"]["initContainers"][1]["image"] == second["image"]
    install_log = kube.text(f"/api/v1/namespaces/{BUILD_NAMESPACE}/pods/{pod['metadata']['name']}/log"
                            "?container=install")
    assert "kenv: updated /opt/kenv/env: +kenv-pyhello 1.0 " in install_log, install_log[-3000:]
    layers = layer_digests(cluster.registry, REPOSITORY, third["digest"])
    assert layers[:-2] == layer_digests(cluster.registry, REPOSITORY, second["digest"])
    added = layer_paths(cluster.registry, REPOSITORY, layers[-2])
    assert f"{site_packages.strip('/')}/kenv_pyhello/__init__.py" in added, sorted(added)[:30]
    assert not any("/rattler/" in path or "/kenv_greeting" in path for path in added)
    assert "hello from kenv-pyhello 1.0" in train(
        kube, namespace, "inc-conda", "python -c 'import kenv_pyhello, idna; print(kenv_pyhello.hello())'",
        pod_name="train-inc-conda-3")
    version = next(v["spec"] for v in env_versions(kube, namespace, "inc-conda") if v["spec"]["version"] == 3)
    by_manager = {(p["manager"], p["name"].lower()): p["version"] for p in version["lock"]["packages"]}
    assert by_manager[("conda", "kenv-pyhello")] == "1.0" and by_manager[("pip", "idna")] == "3.7"


def test_an_unchanged_conda_stage_is_reused_and_a_changed_one_fetches_only_new_packages(kube, namespace, base_image,
                                                                                       channel):
    """Kaniko's cache repository keeps the conda stage's layer; the package cache keeps rattler's downloads."""
    name = f"cache-{uuid.uuid4().hex[:8]}"  # a new environment file, so the first build runs the conda stage

    def environment_yaml(*packages: str) -> str:
        return f"name: {name}\nchannels: [{channel.url}, nodefaults]\ndependencies: [{', '.join(packages)}]\n"
    conda_env(kube, namespace, "first", base_image, {"environmentYaml": environment_yaml("kenv-greeting")})
    greeting = "/noarch/kenv-greeting-2.0-0.conda"
    fetched_once = fetches(channel, greeting)
    # Another final stage (its own Dockerfile) on the same environment file: the conda stage is not run again.
    env = conda_env(kube, namespace, "second", base_image, {"environmentYaml": environment_yaml("kenv-greeting")},
                    docker={"dockerfile": f"FROM {base_image}\nENV KENV_TEST_STAGE=second\n"})
    assert env["status"]["phase"] == "Ready", env["status"]
    assert step_reused(build_pod(kube, env["status"])[1], "/tmp/kenv/kenv-conda.py")
    # A conda package added: the stage runs again, and what it had is taken from the package cache.
    env = conda_env(kube, namespace, "third", base_image,
                    {"environmentYaml": environment_yaml("kenv-greeting", "kenv-hello")})
    assert env["status"]["phase"] == "Ready", env["status"]
    assert not step_reused(build_pod(kube, env["status"])[1], "/tmp/kenv/kenv-conda.py")
    assert fetches(channel, greeting) == fetched_once
    assert "hello from kenv-greeting 2.0" in train(kube, namespace, "third", "kenv-hello").splitlines()


def test_build_failures_say_why_in_the_status(kube, namespace, base_image, channel):
    with socket.socket() as closed:  # a port nothing listens on: the channel is down
        closed.bind((NODE_IP, 0))
        down = f"http://{NODE_IP}:{closed.getsockname()[1]}/"
    # (pipPackages would add `pip`, and the channel's pip brings its python: a file without either)
    create_env(kube, namespace, "no-python", {"docker": {"baseImage": base_image}, "conda": {"environmentYaml": (
        f"channels: [{channel.url}, nodefaults]\ndependencies: [kenv-hello, {{pip: [six==1.16.0]}}]\n")}})
    create_env(kube, namespace, "missing", {"docker": {"baseImage": base_image}, "conda": {
        "channels": [channel.url, "nodefaults"], "packages": ["kenv-not-in-the-channel"]}})
    create_env(kube, namespace, "down", {"docker": {"baseImage": base_image}, "conda": {
        "channels": [down, "nodefaults"], "packages": ["kenv-hello"]}})
    expected = {
        "no-python": "kenv: the conda environment has no python (/opt/kenv/env/bin/python), so its pip list",
        "missing": "No candidates were found for kenv-not-in-the-channel",
        "down": "kenv: conda solve failed (GatewayError)",
    }
    for name, text in expected.items():
        env = wait_phase(kube, namespace, name, {"Ready", "Failed"}, timeout=300)
        message = next(c["message"] for c in env["status"]["conditions"] if c["type"] == "Ready")
        assert env["status"]["phase"] == "Failed" and text in message, (name, message.splitlines()[-8:])
        assert "Traceback" not in env["status"]["failedBuildLog"], name
    assert "kenv: conda solve failed (SolverError)" in env_message(kube, namespace, "missing")


def env_message(kube: Any, namespace: str, name: str) -> str:
    env = kube.request("GET", f"/apis/kenv.dev/v1alpha1/namespaces/{namespace}/environments/{name}")
    return str(next(c["message"] for c in env["status"]["conditions"] if c["type"] == "Ready"))


def test_private_channel_with_its_own_ca_and_basic_auth(kube, namespace, base_image, private_channel):
    server, ca = private_channel
    kube.request("POST", f"/api/v1/namespaces/{namespace}/configmaps",
                 {"metadata": {"name": "channel-ca"}, "data": {"ca.crt": ca}})
    secret_path = f"/api/v1/namespaces/{namespace}/secrets"
    wrong = f"not-{PASSWORD}-{uuid.uuid4().hex}"
    kube.request("POST", secret_path, {"metadata": {"name": "conda-creds",
                                                    "labels": {"kenv.dev/conda-credentials": "true"}},
                                       "type": "kubernetes.io/basic-auth",
                                       "stringData": {"username": USER, "password": wrong}})
    conda = {"channels": [server.url, "nodefaults"], "packages": ["kenv-hello"],
             "channelCredentials": [{"host": NODE_IP, "secretName": "conda-creds"}]}
    env = conda_env(kube, namespace, "private", base_image, conda,
                    build={"caBundle": {"name": "channel-ca", "key": "ca.crt"}})
    assert env["status"]["phase"] == "Failed", env["status"]
    assert "401 Unauthorized" in env_message(kube, namespace, "private")
    assert wrong not in str(env)  # neither in the status nor in the kept build log

    fixed = base64.b64encode(PASSWORD.encode()).decode()
    kube.request("PATCH", f"{secret_path}/conda-creds", {"data": {"password": fixed}},
                 content_type="application/merge-patch+json")
    ready = wait_for(lambda: (lambda e: e if e["status"].get("phase") == "Ready" else None)(
        kube.request("GET", f"/apis/kenv.dev/v1alpha1/namespaces/{namespace}/environments/private")),
        300, "the build retried with the fixed Secret")
    assert ready["status"]["hash"] == env["status"]["desiredHash"]  # credentials are not content
    assert server.fetched("/noarch/kenv-hello-1.0-0.conda", user=USER)
    assert "hello from kenv-greeting 2.0" in train(kube, namespace, "private", "kenv-hello").splitlines()
    version = env_versions(kube, namespace, "private")[0]
    assert PASSWORD not in str(version) and wrong not in str(version)  # the kept build log has neither

