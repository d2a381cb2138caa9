"""The workload controllers ML teams run, on the local cluster: Kubeflow's training operator (PyTorchJob),
KubeRay (RayJob, RayCluster), JobSet and Kueue.

Each is built by hack/build-frameworks.sh from the Go module proxy and runs as a host process against the
cluster's API server, like the control plane. Its CRDs come from the same module version. Its admission
webhooks are the module's own manifests, with each in-cluster Service reference replaced by a URL on 127.0.0.1
and a CA made here: no cert-manager and no in-cluster Service. Nothing starts until a test asks for a
controller. stop() removes the webhook configurations before stopping the processes, so that no API request is
refused by a webhook that has gone away.

    python hack/frameworks.py start kueue jobset      # on the cluster of `hack/cluster up`, until `down`
    frameworks = Frameworks(cluster); frameworks.start("jobset"); ...; frameworks.stop()   # tests
"""

from __future__ import annotations

import base64
import copy
import json
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import images
from pki import cert_pem, issue_cert, key_pem, make_ca
from procs import free_port

HACK = Path(__file__).resolve().parent
NAMES = ("training-operator", "kuberay", "jobset", "kueue")
# Paths the controllers insist on, whatever their flags say (see each _start_*): created here, removed by stop().
TRAINING_OPERATOR_CERT_DIR = Path(tempfile.gettempdir()) / "k8s-webhook-server/serving-certs"
KUEUE_METRICS_CERT_DIR = Path("/etc/kueue/metrics/certs")
# Kueue's integrations: framework -> (the controller it needs started first, else None; the resources its
# webhooks see).
KUEUE_INTEGRATIONS: dict[str, tuple[str | None, set[str]]] = {
    "batch/job": (None, {"jobs"}), "pod": (None, {"pods"}), "jobset.x-k8s.io/jobset": ("jobset", {"jobsets"}),
    "kubeflow.org/pytorchjob": ("training-operator", {"pytorchjobs"}), "ray.io/rayjob": ("kuberay", {"rayjobs"}),
    "ray.io/raycluster": ("kuberay", {"rayclusters"})}
# The training operator's built-in init container template, with getent (glibc's resolver, search list included)
# where it has nslookup.
PYTORCH_INIT_CONTAINER = """
- name: init-pytorch
  image: {{.InitContainerImage}}
  imagePullPolicy: IfNotPresent
  resources:
    limits: {cpu: 100m, memory: 20Mi}
    requests: {cpu: 50m, memory: 10Mi}
  command: ['sh', '-c', 'err=1;for i in $(seq {{.MaxTries}}); do if getent hosts {{.MasterAddr}};
    then err=0 && break; fi;echo waiting for master; sleep 2; done; exit $err']
"""


@dataclass(frozen=True)
class Built:
    name: str
    version: str
    binary: Path
    source: Path  # the module's files: CRDs and webhook manifests


def build(names: Iterable[str]) -> dict[str, Built]:
    out = subprocess.run(["bash", str(HACK / "build-frameworks.sh"), *names], check=True, stdout=subprocess.PIPE,
                         text=True).stdout
    rows = [line.split("\t") for line in out.splitlines() if line.count("\t") == 3]
    return {name: Built(name, version, Path(binary), Path(source)) for name, version, binary, source in rows}


def wait_serving(url: str, ca_pem: str, timeout: float = 30) -> None:
    """Until the webhook at `url` answers its own path: anything but a 404 (an empty AdmissionReview gets a 400 or
    an error review). A controller's /readyz answers before its webhook server listens, and a listening server
    may answer 404 for a path whose handler is not registered yet: the API server's call then fails."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=ssl.create_default_context(cadata=ca_pem)))
    body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode()
    deadline = time.monotonic() + timeout
    while True:
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
        try:
            with opener.open(request, timeout=2):
                return
        except urllib.error.HTTPError as error:
            if error.code != 404:
                return
            last: Exception = error
        except OSError as error:  # refused, reset, TLS not up yet
            last = error
        if time.monotonic() > deadline:
            raise TimeoutError(f"the webhook at {url} does not serve its path after {timeout:.0f}s: {last}")
        time.sleep(0.1)


def local_webhooks(documents: Iterable[dict], prefix: str, base_url: str, ca_bundle: str,
                   keep: Callable[[dict], bool] = lambda webhook: True,
                   patch: Callable[[dict], None] = lambda webhook: None) -> list[dict]:
    """A module's (Mutating|Validating)WebhookConfigurations as its release installs them (names prefixed), with
    each Service reference turned into base_url + its path; only the webhooks `keep` accepts, after `patch`
    (the release's kustomize patches: selectors)."""
    configurations = []
    for document in documents:
        if document.get("kind") not in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
            continue
        result = copy.deepcopy(document)
        result["metadata"] = {"name": prefix + document["metadata"]["name"]}
        result["webhooks"] = []
        for webhook in copy.deepcopy(document["webhooks"]):
            if not keep(webhook):
                continue
            path = webhook["clientConfig"]["service"].get("path", "/")
            webhook["clientConfig"] = {"url": base_url + path, "caBundle": ca_bundle}
            patch(webhook)
            result["webhooks"].append(webhook)
        if result["webhooks"]:
            configurations.append(result)
    return configurations


def resources_of(webhook: dict) -> set[str]:
    return {r.split("/")[0] for rule in webhook.get("rules") or [] for r in rule.get("resources") or []}


class Frameworks:
    """The controllers started on one cluster (a hack/localcluster.LocalCluster)."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.dir = Path(cluster.state_dir) / "frameworks"
        self.dir.mkdir(parents=True, exist_ok=True)
        # One CA per cluster, kept: controllers started earlier (another `start`) serve this certificate, and
        # their webhook configurations trust only this CA.
        self.certs = self.dir / "certs"
        if not (self.certs / "ca.crt").exists():
            ca = make_ca("kenv-frameworks-ca")
            cert, key = issue_cert(ca, "127.0.0.1", hosts=("127.0.0.1", "localhost"))
            self.certs.mkdir(exist_ok=True)
            (self.certs / "tls.key").write_bytes(key_pem(key))
            (self.certs / "tls.key").chmod(0o600)
            (self.certs / "tls.crt").write_bytes(cert_pem(cert))
            (self.certs / "ca.crt").write_bytes(cert_pem(ca[0]))
        self.ca_bundle = base64.b64encode((self.certs / "ca.crt").read_bytes()).decode()
        self.started: dict[str, Built] = {}
        self.webhook_configurations: list[tuple[str, str]] = []  # (kind, name), removed first by stop()
        self.created_paths: list[Path] = []

    # -- lifecycle

    def start(self, name: str) -> Built:
        """Build (cached), install the CRDs, start the controller, register its webhooks; idempotent."""
        if name not in NAMES:
            raise ValueError(f"unknown controller {name!r}: one of {', '.join(NAMES)}")
        if name not in self.started:
            built = build([name])[name]
            t0 = time.monotonic()
            webhooks, paths = len(self.webhook_configurations), len(self.created_paths)
            try:
                getattr(self, "_start_" + name.replace("-", "_"))(built)
            except BaseException:  # undo this one's part; the others keep running
                self._undo(name, self.webhook_configurations[webhooks:], self.created_paths[paths:])
                del self.webhook_configurations[webhooks:], self.created_paths[paths:]
                raise
            self.started[name] = built
            print(f"[frameworks] {name} {built.version} ready in {time.monotonic() - t0:.1f}s", flush=True)
        return self.started[name]

    def stop(self) -> None:
        self._undo(None, self.webhook_configurations, [])
        for name in reversed(list(self.started)):
            self._undo(name, [], [])
        self._undo(None, [], self.created_paths)
        self.webhook_configurations.clear()
        self.started.clear()
        self.created_paths.clear()

    def _undo(self, name: str | None, webhooks: list[tuple[str, str]], paths: list[Path]) -> None:
        """Webhook configurations first (no request meets a webhook that is gone), then the process, then paths."""
        for kind, configuration in reversed(webhooks):
            self.kubectl("delete", kind, configuration, "--ignore-not-found", "--wait=false")
        if name is not None and any(p["name"] == name for p in self.cluster.procs):
            self.cluster.stop_process(name)
        for path in reversed(paths):
            shutil.rmtree(path, ignore_errors=True)
            self.cluster.disown_path(path)

    # -- the controllers

    def _start_training_operator(self, built: Built) -> None:
        """PyTorchJob only (--enable-scheme). Its cert rotator cannot be turned off: it wants a Secret to fill in
        its namespace and waits for tls.crt in the temp dir's k8s-webhook-server/serving-certs, which is also
        where the webhook server reads it; ours goes there. Workers' init container waits for the master's DNS
        name: upstream with alpine's nslookup, here with `getent hosts` in the Debian base image (Debian's busybox
        nslookup fails for a name found through the search list), through the operator's own template flag."""
        self.install_crds([built.source / "manifests/base/crds/kubeflow.org_pytorchjobs.yaml"])
        self.kubectl("create", "namespace", "kubeflow", check=False)
        self.kubectl("create", "secret", "generic", "training-operator-webhook-cert", "-n", "kubeflow", check=False)
        self._copy_certs(TRAINING_OPERATOR_CERT_DIR, owned=TRAINING_OPERATOR_CERT_DIR.parent)
        base = images.build(["base"], self.cluster.registry)["base"]
        template = self.dir / "pytorch-init-container.yaml"
        template.write_text(PYTORCH_INIT_CONTAINER)
        webhook, health = free_port(), free_port()
        self._run("training-operator", [
            built.binary, "--enable-scheme=pytorchjob", f"--webhook-server-port={webhook}",
            f"--health-probe-bind-address=127.0.0.1:{health}", "--metrics-bind-address=0",
            f"--pytorch-init-container-image={base}", f"--pytorch-init-container-template-file={template}"],
            health, MY_POD_NAMESPACE="kubeflow")
        documents = self._yaml(built.source / "manifests/base/webhook/manifests.yaml")
        self.register(local_webhooks(documents, "kenv-local-training-operator-", f"https://127.0.0.1:{webhook}",
                                     self.ca_bundle, keep=lambda w: "pytorchjobs" in resources_of(w)))

    def _start_kuberay(self, built: Built) -> None:
        """RayJob and RayCluster (RayService's CRD too: its controller always runs). The operator reaches each
        head's dashboard through the API server's Service proxy (--use-kubernetes-proxy): on this host, outside
        the pod network's DNS, it could not resolve the head Service's name. No webhooks by default."""
        self.install_crds(sorted((built.source / "config/crd/bases").glob("ray.io_*.yaml")))
        health = free_port()
        self._run("kuberay", [
            built.binary, "--enable-leader-election=false", "--use-kubernetes-proxy", "--metrics-addr=0",
            f"--health-probe-bind-address=127.0.0.1:{health}", "--log-stdout-encoder=console"], health)

    def _start_jobset(self, built: Built) -> None:
        """With its webhooks: the defaulting one is required (the controller dereferences the fields it
        defaults). The release's pod webhooks only see JobSet pods (its kustomize patch)."""
        self.install_crds([built.source / "config/components/crd/bases/jobset.x-k8s.io_jobsets.yaml"])
        webhook, health = free_port(), free_port()
        config = {"apiVersion": "config.jobset.x-k8s.io/v1alpha1", "kind": "Configuration",
                  "leaderElection": {"leaderElect": False}, "internalCertManagement": {"enable": False},
                  "webhook": {"host": "127.0.0.1", "port": webhook, "certDir": str(self.certs)},
                  "health": {"healthProbeBindAddress": f"127.0.0.1:{health}"}, "metrics": {"bindAddress": "0"}}
        self._run("jobset", [built.binary, f"--config={self._write('jobset.yaml', config)}"], health)
        jobset_pods = {"matchExpressions": [{"key": "jobset.sigs.k8s.io/jobset-name", "operator": "Exists"}]}

        def only_jobset_pods(webhook: dict) -> None:
            if "pods" in resources_of(webhook):
                webhook["objectSelector"] = jobset_pods
        documents = self._yaml(built.source / "config/components/webhook/manifests.yaml")
        self.register(local_webhooks(documents, "jobset-", f"https://127.0.0.1:{webhook}", self.ca_bundle,
                                     patch=only_jobset_pods))

    def _start_kueue(self, built: Built) -> None:
        """Queues batch/v1 Jobs, plain pods (its `pod` integration: a scheduling gate) and the workloads of the
        other frameworks already started. The visibility API server is off (it wants its own certificates); the
        metrics server is off but loads a fixed certificate path anyway."""
        self.install_crds(sorted((built.source / "config/components/crd/bases").glob("*.yaml")))
        self._copy_certs(KUEUE_METRICS_CERT_DIR, owned=KUEUE_METRICS_CERT_DIR.parent.parent)
        frameworks = [f for f, (controller, _) in KUEUE_INTEGRATIONS.items()
                      if controller is None or controller in self.started]
        webhook, health = free_port(), free_port()
        config = {"apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration",
                  "namespace": "kueue-system", "manageJobsWithoutQueueName": False,
                  "leaderElection": {"leaderElect": False}, "internalCertManagement": {"enable": False},
                  "webhook": {"host": "127.0.0.1", "port": webhook, "certDir": str(self.certs)},
                  "health": {"healthProbeBindAddress": f"127.0.0.1:{health}"}, "metrics": {"bindAddress": "0"},
                  "featureGates": {"VisibilityOnDemand": False},
                  "integrations": {"frameworks": frameworks}}
        self._run("kueue", [built.binary, f"--config={self._write('kueue.yaml', config)}"], health)
        served = {"clusterqueues", "resourceflavors", "workloads", "cohorts",
                  *(r for f in frameworks for r in KUEUE_INTEGRATIONS[f][1])}
        documents = self._yaml(built.source / "config/components/webhook/manifests.yaml")
        # The release's kustomize patch: its pod webhooks (failurePolicy Fail) never see the system namespaces.
        not_system = {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                                            "values": ["kube-system", "kueue-system"]}]}

        def release_selectors(webhook: dict) -> None:
            if resources_of(webhook) & {"pods", "deployments", "statefulsets"}:
                webhook["namespaceSelector"] = not_system
        self.register(local_webhooks(documents, "kueue-", f"https://127.0.0.1:{webhook}", self.ca_bundle,
                                     keep=lambda w: bool(resources_of(w) & served), patch=release_selectors))

    # -- helpers

    def kubectl(self, *args: str, check: bool = True, stdin: str | None = None) -> str:
        result = subprocess.run([self.cluster.kubectl, "--kubeconfig", str(self.cluster.kubeconfig), *args],
                                input=stdin, capture_output=True, text=True)
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def install_crds(self, files: list[Path]) -> None:
        """Server-side: KubeRay's CRDs are too big for the last-applied annotation of a client-side apply."""
        args = [arg for f in files for arg in ("-f", str(f))]
        self.kubectl("apply", "--server-side", "--force-conflicts", *args)
        names = [yaml.safe_load(f.read_text())["metadata"]["name"] for f in files]
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in names))

    def register(self, configurations: list[dict]) -> None:
        """Register the webhook configurations once every webhook they name serves its path (wait_serving): a
        request in between would be refused (a cached Environment is Ready, and a test's first object sent,
        within that second)."""
        clients = {w["clientConfig"]["url"]: w["clientConfig"]["caBundle"]
                   for c in configurations for w in c.get("webhooks") or []}
        for url, ca_bundle in sorted(clients.items()):
            wait_serving(url, base64.b64decode(ca_bundle).decode())
        for configuration in configurations:
            self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(configuration))
            self.webhook_configurations.append((configuration["kind"], configuration["metadata"]["name"]))

    def _copy_certs(self, target: Path, owned: Path) -> None:
        """The serving certificate where a controller insists on finding it. `owned` (target or a parent) is
        removed on stop (and by `hack/cluster down` after a crash), unless it existed before."""
        if not owned.exists():
            self.created_paths.append(owned)
            self.cluster.own_path(owned)
        target.mkdir(parents=True, exist_ok=True)
        shutil.copytree(self.certs, target, dirs_exist_ok=True)

    def _run(self, name: str, argv: list, health_port: int, **env: str) -> None:
        """The controller as a process of the cluster, against its API server, ready once /readyz answers."""
        self.cluster.add_process(name, argv, env={"KUBECONFIG": str(self.cluster.kubeconfig), **env},
                                 health=f"http://127.0.0.1:{health_port}/readyz")

    def _write(self, name: str, document: dict) -> Path:
        path = self.dir / name
        path.write_text(yaml.safe_dump(document))
        return path

    @staticmethod
    def _yaml(path: Path) -> list[dict]:
        return [d for d in yaml.safe_load_all(path.read_text()) if d]


def main(argv: list[str] | None = None) -> int:
    """`python hack/frameworks.py start NAME...`: start controllers on the cluster `hack/cluster up` runs; they
    stay with it until `hack/cluster down`."""
    import argparse
    import sys

    from localcluster import LocalCluster
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["start"])
    parser.add_argument("names", nargs="+", choices=NAMES)
    args = parser.parse_args(argv)
    cluster = LocalCluster.attach()
    if cluster is None or not cluster.healthy():
        print("no local cluster is running: run `hack/cluster up` first", file=sys.stderr)
        return 1
    frameworks = Frameworks(cluster)
    running = {p["name"] for p in cluster.procs}
    # In NAMES order, Kueue last: it queues the workloads of the controllers started before it.
    for name in sorted(set(args.names) - running, key=NAMES.index):
        frameworks.start(name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
