"""Secret values never leak; namespaces stay isolated; build pods get only what they need."""

from __future__ import annotations

import base64
import json
import uuid

import pytest

from kenv.render import CACHE_MOUNT
from kenvfixtures import GROUP_PATH, build_jobs, create_env, wait_phase

pytestmark = pytest.mark.usefixtures("operator")


def secret(kube, namespace: str, name: str, data: dict[str, str], type_: str = "Opaque") -> None:
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    kube.request("POST", f"/api/v1/namespaces/{namespace}/secrets",
                 {"metadata": {"name": name}, "type": type_, "data": encoded})


def test_secret_values_appear_nowhere_but_secrets(kube, namespace, base_image, operator):
    marker = f"KENV-MARKER-{uuid.uuid4().hex}"
    secret(kube, namespace, "api", {"token": marker + "-token"})
    secret(kube, namespace, "bundle", {"KEY": marker + "-bundle"})
    registry_host = base_image.split("/", 1)[0]
    secret(kube, namespace, "basecreds", {"username": "robot", "password": marker + "-password"})
    create_env(kube, namespace, "secretive", {
        "docker": {"dockerfile": f"FROM {base_image}\nLABEL kenv.test=secret-{namespace}",
                   "baseImageRegistry": {"address": registry_host, "secretName": "basecreds"}},
        "python": {"userManagedDependencies": True},
        "secretEnv": [{"name": "TOKEN", "secretKeyRef": {"name": "api", "key": "token"}}],
        "secretEnvFrom": [{"secretName": "bundle"}],
    })
    env = wait_phase(kube, namespace, "secretive", {"Ready", "Failed"}, timeout=300)
    assert env["status"]["phase"] == "Ready", env["status"]
    pod = kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", {
        "metadata": {"name": "consumer", "labels": {"kenv.dev/environment": "secretive"}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x", "command": ["true"]}]}})

    job = build_jobs(kube, env["status"]["hash"])[0]
    context = kube.request("GET", f"/api/v1/namespaces/kenv-system/configmaps/{job['metadata']['name']}-context")
    places = {
        "operator log": operator.log_text(),
        "events": json.dumps(kube.request("GET", "/api/v1/events")),
        "environment (spec and status)": json.dumps(env),
        "build context ConfigMap": json.dumps(context),
        "build Job": json.dumps(job),
        "injected pod": json.dumps(pod),
        "all ConfigMaps": json.dumps(kube.request("GET", "/api/v1/configmaps")),
    }
    leaks = [place for place, text in places.items() if marker in text]
    assert not leaks, f"secret value found in: {leaks}"
    # The base-registry password does reach the build, but only inside the build's own Secret.
    docker = kube.request("GET", f"/api/v1/namespaces/kenv-system/secrets/{job['metadata']['name']}-docker")
    config = json.loads(base64.b64decode(docker["data"][".dockerconfigjson"]))
    assert marker + "-password" in base64.b64decode(config["auths"][registry_host]["auth"]).decode()


def test_environment_cannot_read_another_namespaces_secret(kube, namespace, base_image):
    other = f"t-{uuid.uuid4().hex[:8]}"
    kube.request("POST", "/api/v1/namespaces", {"metadata": {"name": other}})
    try:
        secret(kube, other, "elsewhere", {"username": "u", "password": "p"})
        create_env(kube, namespace, "thief", {
            "docker": {"dockerfile": f"FROM {base_image}\nLABEL kenv.test=thief-{namespace}",
                       "baseImageRegistry": {"address": "127.0.0.1:1", "secretName": "elsewhere"}},
            "python": {"userManagedDependencies": True}})
        env = wait_phase(kube, namespace, "thief", {"Pending", "Failed", "Ready", "Building"}, timeout=60)
        # Distinct content, so no cache hit: the build needs the credentials, looked up only in the
        # Environment's own namespace, where there are none.
        assert env["status"]["phase"] == "Pending", env["status"]
        built = next(c for c in env["status"]["conditions"] if c["type"] == "Built")
        assert built["reason"] == "MissingReference" and f"{namespace}/elsewhere" in built["message"]
        assert not [j for j in build_jobs(kube) if j["metadata"]["annotations"]["kenv.dev/requested-by"]
                    .endswith(f"{namespace}/thief")]
    finally:
        kube.request("DELETE", f"/api/v1/namespaces/{other}")


def test_cluster_environment_secrets_resolve_in_the_pods_namespace(kube, namespace, base_image):
    name = f"shared-{namespace}"
    kube.request("POST", f"{GROUP_PATH}/clusterenvironments", {
        "apiVersion": "kenv.dev/v1alpha1", "kind": "ClusterEnvironment", "metadata": {"name": name},
        "spec": {"docker": {"baseImage": base_image}, "python": {"userManagedDependencies": True},
                 "secretEnv": [{"name": "TOKEN", "secretKeyRef": {"name": "token", "key": "t"}}]}})
    try:
        pod = kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", {
            "metadata": {"name": "p", "labels": {"kenv.dev/cluster-environment": name}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x", "command": ["true"]}]}})
        reference = next(e for e in pod["spec"]["containers"][0]["env"] if e["name"] == "TOKEN")
        # A secretKeyRef has no namespace field: the kubelet can only read the pod's own namespace.
        assert reference["valueFrom"]["secretKeyRef"] == {"name": "token", "key": "t", "optional": False}
    finally:
        kube.request("DELETE", f"{GROUP_PATH}/clusterenvironments/{name}")


def test_build_pod_mounts_only_context_credentials_ca_and_cache(kube, namespace, base_image, ca_config_map,
                                                                operator):
    create_env(kube, namespace, "mounts", {"docker": {"baseImage": base_image}, "pip": {"packages": ["six"]},
                                           "build": {"caBundle": ca_config_map}})
    env = wait_phase(kube, namespace, "mounts", {"Building", "Ready", "Failed"}, timeout=120)
    job = build_jobs(kube, env["status"].get("desiredHash") or env["status"]["hash"])[0]
    spec = job["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    mounts = {m["mountPath"]: m for m in spec["containers"][0]["volumeMounts"]}
    assert set(mounts) <= {"/workspace", "/kaniko/.docker", "/kenv/ca", CACHE_MOUNT}
    # Writable: only the package cache, the one host directory, the one the release configured.
    assert all(m.get("readOnly") for path, m in mounts.items() if path != CACHE_MOUNT)
    host_paths = [v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v]
    assert host_paths == [path for path in [operator.values()["packageCache"]["hostPath"]] if path]
