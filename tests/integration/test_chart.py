"""The Helm chart (charts/kenv) against the session's real API server.

- lint and render with a few value sets; every rendered object is validated by the API server itself
  (`kubectl apply --dry-run=server`), i.e. against the pinned Kubernetes version's real schemas
  (tests/unit/test_chart_values.py has the checks that need no cluster);
- values the schema refuses fail `helm template` with the schema's message;
- install / upgrade (the webhook CA and certificate stay) / uninstall on the session cluster, the operator a real
  pod of the image built here that must become Ready through its real probes;
- RBAC sufficiency: the operator pod, running as the chart's ServiceAccount with namespaced-only RBAC, builds an
  Environment.

The session's own operator (tests/kenvfixtures.py) is a release of this chart too. A second release here sets
webhook.namespaceSelector to a label no namespace has, so other tests never meet its webhook, and watches only
its own namespaces; where it must act on an Environment, the session operator is paused meanwhile.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import urllib.error
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

import images
from kenv.config import OperatorSettings
from kenvfixtures import GROUP_PATH, create_env, get_env, kubectl, session_operator_paused, wait_for, wait_phase
from release import KenvRelease

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kenv"
CERT_MANAGER_KINDS = {"Issuer", "ClusterIssuer", "Certificate"}
HARMLESS_WEBHOOK = {"webhook": {"namespaceSelector": {"matchLabels": {"kenv.dev/chart-test": "never-matches"}}}}


# --- helpers ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def helm(cluster: Any) -> str:
    """KENV_TEST_HELM, else the helm hack/build-binaries.sh built next to kubectl, else helm on PATH."""
    candidates = [os.environ.get("KENV_TEST_HELM"), str(Path(cluster.kubectl).parent / "helm"), shutil.which("helm")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    out = subprocess.run(["bash", str(ROOT / "hack/build-binaries.sh")], check=True, capture_output=True, text=True)
    return str(Path(out.stdout.strip().splitlines()[-1]) / "helm")


def run_helm(helm: str, cluster: Any, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([helm, "--kubeconfig", str(cluster.kubeconfig), *args], capture_output=True, text=True,
                            env={**os.environ, "HELM_CACHE_HOME": str(cluster.state_dir / "helm/cache"),
                                 "HELM_CONFIG_HOME": str(cluster.state_dir / "helm/config"),
                                 "HELM_DATA_HOME": str(cluster.state_dir / "helm/data")})
    if check:
        assert result.returncode == 0, f"helm {' '.join(args)}\n{result.stdout}\n{result.stderr}"
    return result


def values_file(tmp_path: Path, values: dict[str, Any]) -> str:
    path = tmp_path / f"values-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def render(helm: str, cluster: Any, tmp_path: Path, namespace: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    out = run_helm(helm, cluster, "template", "kenv", str(CHART), "-n", namespace, "--include-crds",
                   "-f", values_file(tmp_path, values)).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def base_values(cluster: Any, **extra: Any) -> dict[str, Any]:
    return {"destinationRepo": f"{cluster.registry or 'registry.example:5000'}/kenv/environments",
            "insecureRegistries": [cluster.registry or "registry.example:5000"], **HARMLESS_WEBHOOK, **extra}


def runnable_values(cluster: Any, **extra: Any) -> dict[str, Any]:
    """base_values plus the images built here, so the release's pods really run (and pull nothing upstream)."""
    built = images.build(["operator", "kaniko"], cluster.registry)
    repository, _, tag = built["operator"].rpartition(":")
    return base_values(cluster, image={"repository": repository, "tag": tag},
                       builderImages={"kaniko": built["kaniko"]}, **extra)


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [o for o in by_kind(objects, kind) if o["metadata"]["name"] == name]
    return found


def exists(kube: Any, path: str) -> bool:
    try:
        kube.request("GET", path)
        return True
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return False
        raise


def make_namespace(kube: Any) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube.request("POST", "/api/v1/namespaces", {"metadata": {"name": name, "labels": {"kenv.dev/test": "1"}}})
    return name


# --- lint, render, validate -------------------------------------------------------------------------------

def test_helm_lint(helm: str, cluster: Any, tmp_path: Path) -> None:
    run_helm(helm, cluster, "lint", str(CHART))  # defaults alone: destinationRepo's `required` is lint-lenient
    for values in (base_values(cluster), base_values(cluster, certManager={"enabled": True}),
                   base_values(cluster, watchNamespaces=["team-a", "team-b"])):
        run_helm(helm, cluster, "lint", "--strict", str(CHART), "-f", values_file(tmp_path, values))


VALUE_SETS = {
    "defaults": {},
    "cert-manager": {"certManager": {"enabled": True}, "metrics": {"serviceMonitor": {"enabled": True}},
                     "logFormat": "json", "pushSecret": "push-creds", "pullSecret": "pull-creds"},
    "watch-namespaces": {"watchNamespaces": ["WATCHED"], "maxParallelBuilds": 2, "pendingImagePolicy": "reject",
                         "curated": {"enabled": True}},  # the default catalog and its ValidatingAdmissionPolicy
}


@pytest.mark.parametrize("case", list(VALUE_SETS))
def test_rendered_manifests_pass_server_side_validation(helm, cluster, kube, namespace, tmp_path, case) -> None:
    values = base_values(cluster, **VALUE_SETS[case])
    watched = None
    if case == "watch-namespaces":
        watched = make_namespace(kube)
        values["watchNamespaces"] = [watched]
    try:
        objects = render(helm, cluster, tmp_path, namespace, values)
        kinds = {o["kind"] for o in objects}
        assert {"CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
                "RoleBinding", "Service", "Deployment", "MutatingWebhookConfiguration"} <= kinds

        extra = [o for o in objects if o["kind"] in CERT_MANAGER_KINDS or o["kind"] == "ServiceMonitor"]
        core = [o for o in objects if o not in extra]
        result = kubectl(cluster, "apply", "--dry-run=server", "-f", "-",
                         stdin=yaml.safe_dump_all(core), check=False)
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("(server dry run)") == len(core), result.stdout

        deployments = {d["metadata"]["name"]: d for d in by_kind(objects, "Deployment")}
        assert set(deployments) == {"kenv-admission", "kenv-controller"}
        for role, deployment in (("admission", deployments["kenv-admission"]),
                                 ("reconciler", deployments["kenv-controller"])):
            spec = deployment["spec"]
            assert spec["replicas"] == 2  # the defaults: replicated admission, one standby reconciler
            assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
            template = spec["template"]["spec"]
            operator_container = template["containers"][0]
            assert operator_container["command"] == ["kenv"]
            assert operator_container["args"] == ["operator", f"--role={role}", "--liveness=http://0.0.0.0:8080/healthz"]
            assert template["securityContext"]["runAsNonRoot"] and template["securityContext"]["runAsUser"] == 65532
            hardened = operator_container["securityContext"]
            assert hardened["readOnlyRootFilesystem"] and not hardened["allowPrivilegeEscalation"]
            assert hardened["capabilities"]["drop"] == ["ALL"]
            assert hardened["seccompProfile"]["type"] == "RuntimeDefault"
        pod = deployments["kenv-admission"]["spec"]["template"]["spec"]
        container = pod["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert {m["mountPath"] for m in container["volumeMounts"]} == {"/certs", "/tmp"}
        controller = deployments["kenv-controller"]["spec"]["template"]["spec"]["containers"][0]
        assert {m["mountPath"] for m in controller["volumeMounts"]} == {"/tmp"}  # no webhook certificate
        assert "webhook" not in {p["name"] for p in controller["ports"]}
        # drains before it stops: closes kept-alive connections, keeps serving 5 s
        assert container["lifecycle"]["preStop"] == {"exec": {"command": ["kenv", "drain", "--seconds", "5"]}}
        assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"  # the `index` probe
        service = next(o for o in by_kind(objects, "Service") if o["metadata"]["name"] == "kenv")
        assert service["spec"]["selector"]["app.kubernetes.io/component"] == "admission"
        budget = by_kind(objects, "PodDisruptionBudget")[0]["spec"]
        assert budget["maxUnavailable"] == 1
        assert budget["selector"]["matchLabels"] == deployments["kenv-admission"]["spec"]["selector"]["matchLabels"]
        assert env["KENV_BUILD_NAMESPACE"] == namespace and env["KENV_WEBHOOK_MANAGED"] == "false"
        assert env["KENV_WEBHOOK_CERT_DIR"] == "/certs" and env["KENV_WEBHOOK_HOST"] == "0.0.0.0"
        assert env["KENV_DESTINATION_REPO"] == values["destinationRepo"]

        # The admission pods' own ServiceAccount only reads (and creates the Events kopf posts).
        assert pod["serviceAccountName"] == "kenv-admission"
        admission_rules = [r for o in by_kind(objects, "ClusterRole") + by_kind(objects, "Role")
                           if o["metadata"]["name"].endswith("-admission") for r in o["rules"]]
        assert admission_rules and all(set(r["verbs"]) <= {"get", "list", "watch"} or r["resources"] == ["events"]
                                       for r in admission_rules), admission_rules
        assert not {res for r in admission_rules for res in r["resources"]} & {"pods", "secrets", "configmaps"}

        webhook_config = by_kind(objects, "MutatingWebhookConfiguration")[0]
        hooks = {w["name"]: w for w in webhook_config["webhooks"]}
        assert set(hooks) == {"inject-environment.kenv.dev", "inject-cluster-environment.kenv.dev"}
        for name, label in (("inject-environment", "kenv.dev/environment"),
                            ("inject-cluster-environment", "kenv.dev/cluster-environment")):
            hook = hooks[f"{name}.kenv.dev"]
            assert hook["clientConfig"]["service"]["path"] == f"/{name}"
            assert hook["objectSelector"] == {"matchExpressions": [{"key": label, "operator": "Exists"}]}
            assert (hook["failurePolicy"], hook["sideEffects"]) == ("Fail", "None")
            assert hook["reinvocationPolicy"] == "IfNeeded"  # again after Kueue's pod webhook queued the pod

        if case == "defaults":
            assert env["KENV_NAMESPACES"] == "" and env["KENV_MAX_PARALLEL_BUILDS"] == "4"
            assert all(h["clientConfig"]["caBundle"] for h in hooks.values())
            cluster_rules = named(objects, "ClusterRole", f"kenv-{namespace}")["rules"]
            assert any("pods" in r["resources"] for r in cluster_rules)
            assert next(r for r in cluster_rules if "secrets" in r["resources"])["verbs"] == ["get"]
        elif case == "cert-manager":
            assert env["KENV_LOG_FORMAT"] == "json" and env["KENV_PUSH_SECRET"] == "push-creds"
            annotation = webhook_config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
            certificates = {o["metadata"]["name"]: o for o in by_kind(extra, "Certificate")}
            assert annotation == f"{namespace}/kenv-webhook" and "kenv-webhook" in certificates
            serving = certificates["kenv-webhook"]["spec"]
            assert serving["secretName"] == next(v["secret"]["secretName"] for v in pod["volumes"]
                                                 if v["name"] == "webhook-certs")
            assert f"kenv.{namespace}.svc" in serving["dnsNames"]
            issuers = {o["metadata"]["name"]: o["spec"] for o in by_kind(extra, "Issuer")}
            assert serving["issuerRef"]["name"] in issuers
            assert all(not h["clientConfig"].get("caBundle") for h in hooks.values())  # the cainjector's job
            assert not by_kind(objects, "Secret")  # cert-manager writes the Secret
            monitor = by_kind(extra, "ServiceMonitor")[0]
            assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
            for obj in extra:
                assert isinstance(obj.get("metadata"), dict) and isinstance(obj.get("spec"), dict)
                assert obj["apiVersion"] in ("cert-manager.io/v1", "monitoring.coreos.com/v1")
                assert obj["metadata"]["namespace"] == namespace
        else:
            assert env["KENV_NAMESPACES"] == watched and env["KENV_PENDING_IMAGE_POLICY"] == "reject"
            roles = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in by_kind(objects, "Role")}
            assert roles == {(namespace, "kenv-builds"), (watched, "kenv-watch"), (namespace, "kenv-admission"),
                             (watched, "kenv-admission")}
            cluster_resources = {res for r in named(objects, "ClusterRole", f"kenv-{namespace}")["rules"]
                                 for res in r["resources"]}
            assert not cluster_resources & {"pods", "secrets", "configmaps", "environments"}
            selector = hooks["inject-environment.kenv.dev"]["namespaceSelector"]  # HARMLESS_WEBHOOK overrides
            assert selector == HARMLESS_WEBHOOK["webhook"]["namespaceSelector"]
    finally:
        if watched:
            kube.request("DELETE", f"/api/v1/namespaces/{watched}")


def test_default_namespace_selector_excludes_release_namespace(helm, cluster, tmp_path) -> None:
    values = base_values(cluster)
    del values["webhook"]
    objects = render(helm, cluster, tmp_path, "kenv-system", values)
    for hook in by_kind(objects, "MutatingWebhookConfiguration")[0]["webhooks"]:
        assert hook["namespaceSelector"] == {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kenv-system"]}]}


def test_the_operators_pull_secrets_reach_its_deployments_and_the_pods_that_run_its_image(helm, cluster, tmp_path):
    values = base_values(cluster, imagePullSecrets=[{"name": "pull-a"}, {"name": "pull-b"}])
    for deployment in by_kind(render(helm, cluster, tmp_path, "kenv-system", values), "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["imagePullSecrets"] == [{"name": "pull-a"}, {"name": "pull-b"}]
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        settings = OperatorSettings(destination_repo="r.local/kenv", operator_image_pull_secrets=env[
            "KENV_OPERATOR_IMAGE_PULL_SECRETS"])
        assert settings.operator_image_pull_secret_list == ["pull-a", "pull-b"]  # for incremental build pods


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "maxParallelBuilds=0"], "at '/maxParallelBuilds': minimum: got 0, want 1"),
    (["--set", "maxParallelBuilds=two"], "at '/maxParallelBuilds': got string, want integer"),
    (["--set", "logFormat=xml"], "at '/logFormat': value must be one of 'text', 'json'"),
    (["--set-string", "certManager.enabled=yes"], "at '/certManager/enabled': got string, want boolean"),
    (["--set", "watchNamespaces={Team_A}"], "at '/watchNamespaces/0': 'Team_A' does not match pattern"),
    (["--set", "destinationRepo=not a repo"], "at '/destinationRepo': 'not a repo' does not match pattern"),
    (["--set", "maxParalelBuilds=2"], "additional properties 'maxParalelBuilds' not allowed"),
    (["--set", "destinationRepo="], "destinationRepo is required"),
])
def test_bad_values_are_refused_with_the_schema_message(helm, cluster, args, message) -> None:
    base = ["--set", "destinationRepo=registry.example:5000/kenv/environments"]
    result = run_helm(helm, cluster, "template", "kenv", str(CHART), "-n", "kenv-system", *base, *args, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


# --- install, upgrade, uninstall ------------------------------------------------------------------------------

def test_install_upgrade_uninstall(helm, cluster, kube, namespace, tmp_path) -> None:
    values = values_file(tmp_path, runnable_values(cluster, watchNamespaces=[namespace]))
    name = f"kenv-{namespace}"  # cluster-scoped objects carry the release namespace
    paths = {
        "deployment": f"/apis/apps/v1/namespaces/{namespace}/deployments/kenv-controller",
        "admission": f"/apis/apps/v1/namespaces/{namespace}/deployments/kenv-admission",
        "serviceaccount": f"/api/v1/namespaces/{namespace}/serviceaccounts/kenv",
        "admission serviceaccount": f"/api/v1/namespaces/{namespace}/serviceaccounts/kenv-admission",
        "admission clusterrole": f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{name}-admission",
        "service": f"/api/v1/namespaces/{namespace}/services/kenv",
        "secret": f"/api/v1/namespaces/{namespace}/secrets/kenv-webhook-tls",
        "webhook": f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}",
        "clusterrole": f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{name}",
        "clusterrolebinding": f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{name}",
        "role": f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles/kenv-builds",
    }
    installed = False
    try:
        # --wait: the operator pod must pass its real readiness probe (kopf's, which asks the registry).
        result = run_helm(helm, cluster, "install", "kenv", str(CHART), "-n", namespace, "-f", values,
                          "--wait", "--timeout=5m")
        installed = True
        assert "kubectl get env -w" in result.stdout  # NOTES.txt
        release = KenvRelease(cluster, namespace=namespace)
        release.wait_ready()
        assert release.pod()["spec"]["serviceAccountName"] == "kenv"
        for what, path in paths.items():
            assert exists(kube, path), what
        for plural in ("environments", "clusterenvironments"):
            assert exists(kube, f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{plural}.kenv.dev")

        secret = kube.request("GET", paths["secret"])
        webhook = kube.request("GET", paths["webhook"])
        assert secret["type"] == "kubernetes.io/tls" and set(secret["data"]) == {"ca.crt", "tls.crt", "tls.key"}
        for hook in webhook["webhooks"]:
            assert hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
        check_serving_certificate(secret["data"], f"kenv.{namespace}.svc")
        service = kube.request("GET", paths["service"])
        assert {(p["name"], p["port"]) for p in service["spec"]["ports"]} == {("webhook", 443), ("metrics", 8000)}

        run_helm(helm, cluster, "upgrade", "kenv", str(CHART), "-n", namespace, "-f", values,
                 "--set", "maxParallelBuilds=2", "--wait", "--timeout=5m")
        release.wait_ready()  # a new controller pod takes the Lease the old leader released on its way out
        operator_env = release.pod()["spec"]["containers"][0]["env"]
        assert {"name": "KENV_MAX_PARALLEL_BUILDS", "value": "2"} in operator_env  # the new pod runs
        assert kube.request("GET", paths["secret"])["data"] == secret["data"], "upgrade replaced the webhook cert"
        upgraded = kube.request("GET", paths["webhook"])
        assert [h["clientConfig"]["caBundle"] for h in upgraded["webhooks"]] == [secret["data"]["ca.crt"]] * 2
        env = kube.request("GET", paths["deployment"])["spec"]["template"]["spec"]["containers"][0]["env"]
        assert {"name": "KENV_MAX_PARALLEL_BUILDS", "value": "2"} in env

        run_helm(helm, cluster, "uninstall", "kenv", "-n", namespace, "--wait")
        installed = False
        for what, path in paths.items():
            assert not exists(kube, path), f"{what} left after uninstall"
        assert exists(kube, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/environments.kenv.dev")
    finally:
        if installed:
            run_helm(helm, cluster, "uninstall", "kenv", "-n", namespace, check=False)


def check_serving_certificate(data: dict[str, str], dns_name: str) -> None:
    from cryptography import x509

    ca = x509.load_pem_x509_certificate(base64.b64decode(data["ca.crt"]))
    cert = x509.load_pem_x509_certificate(base64.b64decode(data["tls.crt"]))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)
    assert dns_name in names
    cert.verify_directly_issued_by(ca)


# --- RBAC sufficiency -------------------------------------------------------------------------------------------

def can_i(cluster: Any, namespace: str, account: str, *args: str) -> str:
    result = kubectl(cluster, "auth", "can-i", *args, f"--as=system:serviceaccount:{namespace}:{account}",
                     check=False)
    return result.stdout.strip()


FORBIDDEN = re.compile(r"Forbidden|\b(status|code)[=:]\s*403\b")


def forbidden_records(log: str) -> list[dict[str, Any]]:
    """The operator's JSON log records that report a refused API call. Matching structured records and the
    status code as a field, never a bare "403" in free text (a random namespace name may hold those digits)."""
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert records, log[-2000:]
    return [r for r in records if FORBIDDEN.search(json.dumps({k: v for k, v in r.items() if k != "message"}))
            or FORBIDDEN.search(re.sub(r"t-[0-9a-f]{8}", "t-NAMESPACE", str(r.get("message", ""))))]


def test_operator_runs_with_the_chart_rbac(helm, cluster, kube, namespace, crds, base_image, tmp_path) -> None:
    """Namespaced-only RBAC (watchNamespaces): the chart's ServiceAccount is enough to build an Environment."""
    watched = make_namespace(kube)
    values = values_file(tmp_path, runnable_values(cluster, watchNamespaces=[watched], logFormat="json",
                                                   extraEnv=[{"name": "KENV_POLL_SECONDS", "value": "1"}]))
    release = KenvRelease(cluster, namespace=namespace)
    installed = False
    try:
        with session_operator_paused(cluster):
            run_helm(helm, cluster, "install", "kenv", str(CHART), "-n", namespace, "-f", values,
                     "--wait", "--timeout=5m")
            installed = True
            account = "kenv"
            assert can_i(cluster, namespace, account, "create", "jobs", "-n", namespace) == "yes"
            assert can_i(cluster, namespace, account, "get", "secrets", "-n", watched) == "yes"
            assert can_i(cluster, namespace, account, "list", "secrets", "-n", watched) == "no"
            assert can_i(cluster, namespace, account, "get", "secrets", "-n", "default") == "no"
            assert can_i(cluster, namespace, account, "get", "configmaps", "-n", "default") == "no"
            assert can_i(cluster, namespace, account, "patch", "pods", "-n", "default") == "no"
            assert can_i(cluster, namespace, account, "list", "pods", "--all-namespaces") == "no"
            assert can_i(cluster, namespace, account, "list", "environments.kenv.dev", "-n", watched) == "yes"
            assert can_i(cluster, namespace, account, "list", "environments.kenv.dev", "-n", "default") == "no"
            assert can_i(cluster, namespace, account, "create", "mutatingwebhookconfigurations") == "no"
            assert release.pod()["spec"]["serviceAccountName"] == account
            # The admission pods read and never write: a ServiceAccount of their own.
            admission = "kenv-admission"
            assert {p["spec"]["serviceAccountName"] for p in release.pods(role="admission")} == {admission}
            for verb, resource, where in (("list", "environments.kenv.dev", watched),
                                          ("watch", "environmentversions.kenv.dev", namespace),
                                          ("list", "clusterenvironments.kenv.dev", None)):
                assert can_i(cluster, namespace, admission, verb, resource,
                             *(("-n", where) if where else ())) == "yes", (verb, resource)
            for verb, resource in (("patch", "environments.kenv.dev"), ("create", "environmentversions.kenv.dev"),
                                   ("get", "secrets"), ("list", "pods"), ("patch", "pods"), ("create", "jobs")):
                assert can_i(cluster, namespace, admission, verb, resource, "-n", watched) == "no", (verb, resource)
            assert can_i(cluster, namespace, admission, "patch", "clusterenvironments.kenv.dev") == "no"
            assert can_i(cluster, namespace, admission, "update", "leases", "-n", namespace) == "no"

            # A rebuild token forces a build even when this content is already in the registry: the Job proves
            # `create jobs` (and ConfigMaps) in the release namespace, Ready proves reading its pods and the
            # registry.
            create_env(kube, watched, "rbac", {"docker": {"baseImage": base_image},
                                              "python": {"userManagedDependencies": True}},
                       annotations={"kenv.dev/rebuild": uuid.uuid4().hex[:8]})

            def building_or_ready() -> dict[str, Any] | None:
                status = get_env(kube, watched, "rbac").get("status") or {}
                return status if status.get("phase") in ("Building", "Ready", "Failed") else None
            status = wait_for(building_or_ready, 60, "Building or Ready")
            assert status["phase"] in ("Building", "Ready"), status
            jobs = kube.request("GET", f"/apis/batch/v1/namespaces/{namespace}/jobs?labelSelector="
                                       "kenv.dev%2Frole%3Dbuild")
            assert len(jobs["items"]) == 1, jobs["items"]
            assert status.get("buildJob", {}).get("namespace", namespace) == namespace

            final = wait_phase(kube, watched, "rbac", {"Ready", "Failed"}, timeout=180)["status"]
            assert final["phase"] == "Ready", final
            assert final["image"].startswith(f"{cluster.registry}/kenv/environments@sha256:")
            refused = forbidden_records(release.log_text())
            assert not refused, refused[:5]
            # Delete the Environment while this operator still runs, so its finalizer is removed.
            env_path = f"{GROUP_PATH}/namespaces/{watched}/environments/rbac"
            kube.request("DELETE", env_path)
            wait_for(lambda: not exists(kube, env_path), 30, "the Environment to be deleted")
            run_helm(helm, cluster, "uninstall", "kenv", "-n", namespace, "--wait")
            installed = False
    finally:
        if installed:
            run_helm(helm, cluster, "uninstall", "kenv", "-n", namespace, check=False)
        kube.request("DELETE", f"/api/v1/namespaces/{watched}")
