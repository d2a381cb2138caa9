"""Objects an Environment names are followed, and build logs outlive their Jobs — on the real cluster:

- editing the ConfigMap of spec.docker.dockerfileFrom builds a new version with no edit of the Environment;
- a build that failed on a wrong CA bundle is retried when that ConfigMap is fixed, with the same content hash
  (the CA is build-time trust, not content);
- the failed build's log and each version's build log are printed by `kenv logs` after the Job and its pod
  are gone.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kenvfixtures import (
    BUILD_NAMESPACE,
    CA_BUNDLE,
    create_env,
    env_versions,
    get_env,
    kenv_cli,
    run_kenv,
    wait_for,
    wait_phase,
)

pytestmark = pytest.mark.usefixtures("operator")


def config_map(kube: Any, namespace: str, name: str, data: dict[str, str]) -> None:
    kube.request("POST", f"/api/v1/namespaces/{namespace}/configmaps", {"metadata": {"name": name}, "data": data})


def edit_config_map(kube: Any, namespace: str, name: str, data: dict[str, str]) -> None:
    kube.request("PATCH", f"/api/v1/namespaces/{namespace}/configmaps/{name}", {"data": data},
                 content_type="application/merge-patch+json")


def unrelated_ca() -> str:
    """A CA nobody signed anything with: pip behind this machine's TLS proxy cannot verify PyPI with it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kenv test CA that signs nothing")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def delete_job_and_pods(kube: Any, name: str) -> None:
    """What the Job's TTL does: the Job and its pods go away."""
    kube.request("DELETE", f"/apis/batch/v1/namespaces/{BUILD_NAMESPACE}/jobs/{name}",
                 {"propagationPolicy": "Foreground"})
    wait_for(lambda: not kube.request("GET", f"/api/v1/namespaces/{BUILD_NAMESPACE}/pods?labelSelector=job-name%3D"
                                             f"{name}")["items"], 60, f"build Job {name}'s pods to be deleted")


def test_editing_the_dockerfile_config_map_builds_a_new_version(kube, cluster, namespace, base_image):
    config_map(kube, namespace, "base-dockerfile", {"Dockerfile": f"FROM {base_image}\nLABEL kenv.stage=one\n"})
    create_env(kube, namespace, "followed", {"docker": {"dockerfileFrom": {"name": "base-dockerfile",
                                                                           "key": "Dockerfile"}},
                                             "python": {"userManagedDependencies": True}})
    first = wait_phase(kube, namespace, "followed", {"Ready", "Failed"})
    assert first["status"]["phase"] == "Ready" and first["status"]["version"] == 1

    edit_config_map(kube, namespace, "base-dockerfile", {"Dockerfile": f"FROM {base_image}\nLABEL kenv.stage=two\n"})
    second = wait_for(lambda: (lambda env: env if env["status"].get("version") == 2 and
                               env["status"]["phase"] == "Ready" else None)(get_env(kube, namespace, "followed")),
                      300, "version 2 built from the edited ConfigMap")
    assert second["metadata"]["generation"] == first["metadata"]["generation"]  # the Environment was not edited
    assert second["status"]["hash"] != first["status"]["hash"]
    versions = env_versions(kube, namespace, "followed")
    assert [v["spec"]["reason"] for v in versions] == ["BuildSucceeded", "BuildSucceeded"]

    # Each version keeps its build log; `kenv logs --version` prints it after the Job is gone.
    delete_job_and_pods(kube, first["status"]["buildJob"]["name"])
    kept = kenv_cli(cluster, "logs", "followed", "-n", namespace, "--version", "1")
    assert kept == versions[0]["spec"]["buildLog"]
    assert f"Pushed {cluster.registry}/kenv/environments@{first['status']['digest']}" in kept


def test_a_fixed_ca_bundle_retries_the_failed_build_and_the_failure_log_is_kept(kube, cluster, namespace,
                                                                                base_image):
    config_map(kube, namespace, "proxy-ca", {"ca.crt": unrelated_ca()})
    create_env(kube, namespace, "trusting", {
        "docker": {"dockerfile": f"FROM {base_image}\nLABEL kenv.test={namespace}-ca"},
        "pip": {"requirements": "six==1.16.0\n"}, "build": {"caBundle": {"name": "proxy-ca", "key": "ca.crt"}}})
    failed = wait_phase(kube, namespace, "trusting", {"Ready", "Failed"}, timeout=600)
    assert failed["status"]["phase"] == "Failed"
    failure_log = failed["status"]["failedBuildLog"]
    assert "CERTIFICATE_VERIFY_FAILED" in failure_log and "six==1.16.0" in failure_log

    # The build pod is gone (TTL): `kenv logs` prints the log kept in status.
    failed_job = failed["status"]["buildJob"]["name"]
    delete_job_and_pods(kube, failed_job)
    shown = run_kenv(cluster, "logs", "trusting", "-n", namespace)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == failure_log and "status.failedBuildLog" in shown.stderr

    # Nothing in the Environment changes; fixing the ConfigMap is enough, and the content hash stays.
    edit_config_map(kube, namespace, "proxy-ca", {"ca.crt": CA_BUNDLE.read_text()})
    ready = wait_phase(kube, namespace, "trusting", {"Ready"}, timeout=600)
    assert ready["status"]["hash"] == failed["status"]["desiredHash"]
    assert ready["status"]["buildJob"]["name"] != failed_job
    assert ready["metadata"]["generation"] == failed["metadata"]["generation"]
    assert not ready["status"].get("failedBuildLog")
