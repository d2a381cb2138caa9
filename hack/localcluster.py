"""A real Kubernetes cluster on this machine, without Docker: control plane, registry and one real node.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy and CoreDNS (built from
source by hack/build-binaries.sh), Debian's containerd + runc and CNI plugins (hack/node.py), and the distribution v3
registry (also built by hack/build-binaries.sh). The images the node needs (pause first) are built here by
hack/images.py.

    python hack/localcluster.py up|down|status      # or hack/cluster up|down|status

Only stdlib, cryptography and pyyaml, so it works before the project itself is installed.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import images
from kubeapi import KubeAPI
from node import Node
from nodeconfig import NODE_IP, POD_SUBNET, SERVICE_CIDR, corefile, kubeconfig, node_name
from pki import cert_pem, issue_cert, key_pem, make_ca
from procs import alive, ensure_no_proxy, free_port, proc_start_time, script_output, spawn, stop_all

REPO = Path(__file__).resolve().parent.parent
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kubelet",
            "kube-proxy")
CONTROLLERS = ",".join([
    "job-controller", "garbage-collector-controller", "namespace-controller", "serviceaccount-controller",
    "serviceaccount-token-controller", "ttl-after-finished-controller",
    "root-ca-certificate-publisher-controller",  # kube-root-ca.crt, which the pods' token volumes reference
    "deployment-controller", "replicaset-controller", "statefulset-controller", "daemonset-controller",
    "endpoints-controller", "endpointslice-controller",  # Service endpoints, which kube-proxy routes to
    "node-lifecycle-controller", "pod-garbage-collector-controller", "disruption-controller",
    "clusterrole-aggregation-controller",
])
# Pods, the node and host tools reach these without any proxy.
LOCAL_HOSTS = (NODE_IP, POD_SUBNET, SERVICE_CIDR, ".svc", ".cluster.local")


def newest(bins: Path, name: str) -> Path:
    """The highest version of a binary build-binaries.sh names NAME-vX.Y.Z (not a .tmp an interrupted build left)."""
    built = [p for p in bins.glob(f"{name}-v*") if not p.name.endswith(".tmp")]
    return max(built, key=lambda p: [int(n) for n in p.name.removeprefix(f"{name}-v").split(".")])


def default_state_dir() -> Path:
    return Path(os.environ.get("KENV_CLUSTER_DIR") or Path.home() / ".cache/kenv/cluster")


class LocalCluster:
    def __init__(self, state_dir: str | Path | None = None, bin_dir: str | Path | None = None):
        self.state_dir = Path(state_dir or default_state_dir()).resolve()
        self.bin_dir = Path(bin_dir) if bin_dir else None
        self.kubeconfig = self.state_dir / "kubeconfig"
        self.ca_pem = self.state_dir / "pki/ca.crt"
        self.state_file = self.state_dir / "state.json"
        self.node = Node(self.state_dir)
        self.server = ""
        self.registry = ""
        self.images: dict[str, str] = {}  # harness images in the registry: pause, kaniko, base, ...
        self.procs: list[dict] = []
        self.owned_paths: list[str] = []  # made for a process the cluster runs (hack/frameworks.py); removed on stop
        ensure_no_proxy(hosts=LOCAL_HOSTS)

    @property
    def kubectl(self) -> str:
        return str(self._bins() / "kubectl")

    @property
    def node_name(self) -> str:
        return self.node.name

    # -- lifecycle

    def start(self) -> LocalCluster:
        t0 = time.monotonic()
        bins = self._bins()
        pause = images.build(["pause"])["pause"]  # before anything runs: a build failure leaves nothing behind
        # Every start is a fresh cluster (new CA, empty etcd, empty node); registry contents are kept as a cache.
        shutil.rmtree(self.state_dir / "etcd", ignore_errors=True)
        shutil.rmtree(self.state_dir / "node", ignore_errors=True)
        for d in ("pki", "etcd", "logs", "registry"):
            (self.state_dir / d).mkdir(parents=True, exist_ok=True)
        self.node.claim()
        try:
            pki = self._write_pki()
            ports = {k: free_port() for k in ("etcd", "etcd_peer", "kcm", "scheduler", "proxy_healthz",
                                              "proxy_metrics", "dns_health", "dns_ready")}
            self.node.prepare_network()
            ports |= {"apiserver": free_port(NODE_IP), "registry": free_port(NODE_IP)}
            self.server = f"https://{NODE_IP}:{ports['apiserver']}"
            self.registry = f"{NODE_IP}:{ports['registry']}"
            self._write_kubeconfigs(pki)
            self.node.configure(pki, self.registry, f"{self.registry}/{pause.split('/', 1)[1]}",
                                (ports["proxy_healthz"], ports["proxy_metrics"]), self._node_kubeconfigs(pki))
            self._start_etcd(bins, ports)
            self._start_apiserver(bins, ports, pki)
            self._wait_ready("kube-apiserver")
            self._start_controllers(bins, ports, pki)
            self._start_registry(bins)
            self._start_dns(bins, ports)
            self.images["pause"] = images.push(pause, self.registry)
            self._start_node(bins, ports)
            self._wait_ready("kube-controller-manager")
            self._wait_ready("kube-scheduler")
            self._wait_ready("coredns")
        except BaseException:
            self.stop()
            raise
        self._save_state()
        atexit.register(self.stop)  # an in-process cluster never outlives its Python process (`up` opts out)
        print(f"[localcluster] ready in {time.monotonic() - t0:.1f}s: {self.server}, node {self.node_name}",
              file=sys.stderr)
        return self

    def stop(self) -> None:
        """Controllers and scheduler first (nothing recreates or places pods), then the node is drained and its
        daemons stopped and cleaned up, then the rest."""
        try:
            if self.procs:
                early = [p for p in self.procs if p["name"] in ("kube-controller-manager", "kube-scheduler")]
                stop_all(early)
                if any(p["name"] == "kubelet" and alive(p) for p in self.procs) and self._apiserver_up():
                    self.node.drain(KubeAPI(self.kubeconfig))
                stop_all([p for p in self.procs if p["name"] in ("kube-proxy", "kubelet", "containerd")])
        finally:
            self.node.cleanup()
            for path in reversed(self.owned_paths):
                shutil.rmtree(path, ignore_errors=True)
            self.owned_paths = []
            if self.procs:  # etcd last: an API server that lost etcd waits out its whole shutdown timeout.
                # The API server's graceful shutdown takes ~15 s even with no client left (its endpoint
                # reconciler); nothing is lost by cutting it short once its clients are gone.
                stop_all([p for p in self.procs if p["name"] != "etcd"], timeout=3)
                stop_all(self.procs)
            self.procs = []
            self.state_file.unlink(missing_ok=True)

    def pids(self) -> list[int]:
        return [p["pid"] for p in self.procs]

    def stop_component(self, name: str, timeout: float = 3) -> None:
        """Stop one process (etcd, kube-apiserver, registry...) for an outage; start_component undoes it.
        SIGKILL after `timeout`: with clients still connected, apiserver and etcd drain for 7-15s+."""
        proc = self._proc(name)
        stop_all([proc], timeout)
        proc["stopped"] = True

    def start_component(self, name: str, timeout: float = 60) -> None:
        """Start a stopped component again, same flags and port, and wait until it is healthy."""
        proc = self._proc(name)
        if not proc.get("stopped"):
            raise RuntimeError(f"{name} is running")
        self._spawn(name, proc["argv"], proc["health"], replace=proc)
        self._wait_ready(name, timeout)
        self._save_state()

    def add_process(self, name: str, argv: list, env: dict[str, str], health: str | None,
                    timeout: float = 120) -> None:
        """Run one more process with the cluster (a workload controller, hack/frameworks.py): logged with the
        others, stopped by stop() and by `down` after a crash, and waited for until `health` answers."""
        if any(p["name"] == name for p in self.procs):
            raise RuntimeError(f"{name} is already running with this cluster")
        self._spawn(name, argv, health, extra_env=env)
        try:
            self._wait_ready(name, timeout)
        except BaseException:
            self.stop_process(name)  # never left running unrecorded
            raise
        self._save_state()

    def stop_process(self, name: str) -> None:
        """Stop and forget a process add_process started."""
        proc = self._proc(name)
        stop_all([proc], timeout=5)
        self.procs.remove(proc)
        self._save_state()

    def own_path(self, path: str | Path) -> None:
        """A directory made on this machine for a cluster process: removed on stop (and by `down`)."""
        self.owned_paths.append(str(path))
        self._save_state()

    def disown_path(self, path: str | Path) -> None:
        """Forget a directory its owner removed itself (stop() must not remove what might be someone else's by then)."""
        self.owned_paths = [p for p in self.owned_paths if p != str(path)]
        self._save_state()

    def _proc(self, name: str) -> dict:
        return next(p for p in self.procs if p["name"] == name)

    # -- `up` / `down` across processes

    @classmethod
    def attach(cls, state_dir: str | Path | None = None) -> LocalCluster | None:
        """The cluster a previous `up` left in state_dir (running or not), or None."""
        self = cls(state_dir)
        if not self.state_file.exists():
            return None
        state = json.loads(self.state_file.read_text())
        self.server, self.registry, self.procs = state["server"], state["registry"], state["procs"]
        self.images = state.get("images", {})
        self.owned_paths = state.get("owned_paths", [])
        self.bin_dir = Path(state["bin_dir"])
        return self

    def healthy(self) -> bool:
        if not self.procs or any(proc_start_time(p["pid"]) != p["start"] for p in self.procs):
            return False
        return self._apiserver_up()

    def _apiserver_up(self) -> bool:
        try:
            return bool(KubeAPI(self.kubeconfig).request("GET", "/readyz", timeout=5) == "ok")
        except (OSError, urllib.error.URLError):
            return False

    def exports(self) -> str:
        return f"export KUBECONFIG={self.kubeconfig}\nexport KENV_REGISTRY={self.registry}"

    # -- internals

    def _bins(self) -> Path:
        if self.bin_dir is None:
            assets = os.environ.get("KUBEBUILDER_ASSETS")
            if assets and all((Path(assets) / b).exists() for b in BINARIES):
                self.bin_dir = Path(assets)
            else:  # cached after the first (slow) run; the folder is its last stdout line
                self.bin_dir = Path(script_output(REPO / "hack/build-binaries.sh"))
        return self.bin_dir

    def _spawn(self, name: str, argv: list, health: str | None = None, replace: dict | None = None,
               extra_env: dict[str, str] | None = None) -> None:
        env = dict(os.environ) | (extra_env or {})
        env.setdefault("OTEL_TRACES_EXPORTER", "none")  # the registry (distribution v3) would export traces
        ensure_no_proxy(env, LOCAL_HOSTS)
        proc = spawn(name, argv, self.state_dir / "logs", env) | {"health": health}
        if replace is None:
            self.procs.append(proc)
        else:  # keep its place: stop() goes through the list backwards, dependants first
            self.procs[self.procs.index(replace)] = proc
        self.node.record_pids([(p["pid"], p["start"]) for p in self.procs])

    def _wait_ready(self, name: str, timeout: float = 60) -> None:
        health = self._proc(name)["health"]
        if health:
            self._wait_http(health, name, timeout)

    def _write_pki(self) -> Path:
        """The cluster CA and every certificate signed by it: API server serving (reachable as NODE_IP and as the
        `kubernetes` Service), admin, kubelet (client as its node, serving for logs/exec), the API server's
        client for kubelets, kube-proxy's client, and the service-account signing key."""
        pki = self.state_dir / "pki"
        ca = make_ca("kenv-local-ca")
        node = node_name()
        certs = {
            "apiserver": issue_cert(ca, "kube-apiserver", hosts=(
                "127.0.0.1", "localhost", NODE_IP, "10.0.0.1", "kubernetes", "kubernetes.default",
                "kubernetes.default.svc", "kubernetes.default.svc.cluster.local")),
            "admin": issue_cert(ca, "kenv-admin", orgs=("system:masters",), client=True),
            "kubelet": issue_cert(ca, f"system:node:{node}", orgs=("system:nodes",), client=True),
            "kubelet-serving": issue_cert(ca, node, hosts=(NODE_IP, node, "127.0.0.1")),
            "apiserver-kubelet-client": issue_cert(ca, "kube-apiserver-kubelet-client",
                                                   orgs=("system:masters",), client=True),
            "kube-proxy": issue_cert(ca, "system:kube-proxy", client=True),
        }
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        files = {"ca.crt": cert_pem(ca[0]), "ca.key": key_pem(ca[1]), "sa.key": key_pem(sa_key),
                 "sa.pub": sa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                           serialization.PublicFormat.SubjectPublicKeyInfo)}
        for name, (cert, key) in certs.items():
            files[f"{name}.crt"], files[f"{name}.key"] = cert_pem(cert), key_pem(key)
        for name, data in files.items():
            (pki / name).write_bytes(data)
            (pki / name).chmod(0o600)
        return pki

    def _write_kubeconfigs(self, pki: Path) -> None:
        self.kubeconfig.write_text(yaml.safe_dump(self._kubeconfig_for(pki, "admin", "kenv-admin")))
        self.kubeconfig.chmod(0o600)

    def _kubeconfig_for(self, pki: Path, cert: str, user: str) -> dict:
        return kubeconfig(self.server, (pki / "ca.crt").read_bytes(), (pki / f"{cert}.crt").read_bytes(),
                          (pki / f"{cert}.key").read_bytes(), user)

    def _node_kubeconfigs(self, pki: Path) -> dict[str, dict]:
        return {"kubelet": self._kubeconfig_for(pki, "kubelet", f"system:node:{node_name()}"),
                "kube-proxy": self._kubeconfig_for(pki, "kube-proxy", "system:kube-proxy")}

    def _start_etcd(self, bins: Path, ports: dict) -> None:
        client, peer = f"http://127.0.0.1:{ports['etcd']}", f"http://127.0.0.1:{ports['etcd_peer']}"
        self._spawn("etcd", health=f"{client}/health", argv=[
            bins / "etcd", "--name=kenv", f"--data-dir={self.state_dir / 'etcd'}", "--unsafe-no-fsync",
            f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=kenv={peer}", "--log-level=warn"])
        self._wait_ready("etcd")

    def _start_apiserver(self, bins: Path, ports: dict, pki: Path) -> None:
        """Serves on the node address only: the host, the kubelet and (through the `kubernetes` Service and
        kube-proxy) every pod reach it there, and the default endpoint reconciler publishes it."""
        self._spawn("kube-apiserver", health=f"{self.server}/readyz", argv=[
            bins / "kube-apiserver", f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
            f"--secure-port={ports['apiserver']}", f"--bind-address={NODE_IP}", f"--advertise-address={NODE_IP}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}", "--authorization-mode=Node,RBAC",
            # Without a front-proxy CA, every component's delegated authn logs "missing content for CA
            # bundle" errors; no cert is ever issued with the allowed name, so this trusts nobody.
            f"--requestheader-client-ca-file={pki / 'ca.crt'}",
            "--requestheader-allowed-names=kenv-front-proxy",
            "--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}", "--allow-privileged=true",
            "--enable-admission-plugins=NodeRestriction,MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
            # logs, exec and port-forward: the API server calls the kubelet with a client certificate the
            # kubelet's webhook authorizer accepts, and checks the kubelet's serving certificate.
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={pki / 'ca.crt'}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            f"--cert-dir={pki / 'apiserver-certs'}"])

    def _start_controllers(self, bins: Path, ports: dict, pki: Path) -> None:
        kc = str(self.kubeconfig)
        common = ["--kubeconfig", kc, "--authentication-kubeconfig", kc, "--authorization-kubeconfig", kc,
                  "--leader-elect=false", "--bind-address=127.0.0.1"]
        self._spawn("kube-controller-manager", health=f"https://127.0.0.1:{ports['kcm']}/healthz", argv=[
            bins / "kube-controller-manager", *common, f"--secure-port={ports['kcm']}",
            f"--controllers={CONTROLLERS}", "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}", f"--cert-dir={pki / 'kcm'}"])
        self._spawn("kube-scheduler", health=f"https://127.0.0.1:{ports['scheduler']}/healthz", argv=[
            bins / "kube-scheduler", *common, f"--secure-port={ports['scheduler']}",
            f"--cert-dir={pki / 'scheduler'}"])

    def _start_registry(self, bins: Path) -> None:
        """On the node address: containerd pulls and pods push under the same name. Distribution v3 (built by
        hack/build-binaries.sh) rather than Debian's 2.8: pruned versions delete their tags (OCI 1.1)."""
        config = {"version": 0.1, "log": {"level": "info"},
                  "storage": {"filesystem": {"rootdirectory": str(self.state_dir / "registry")},
                              "delete": {"enabled": True}},
                  "http": {"addr": self.registry}}
        cfg = self.state_dir / "registry.yml"
        cfg.write_text(yaml.safe_dump(config))
        binary = newest(bins, "registry")
        self._spawn("registry", [binary, "serve", cfg], health=f"http://{self.registry}/v2/")
        self._wait_ready("registry")

    def _start_dns(self, bins: Path, ports: dict) -> None:
        """CoreDNS on the node address, where the kubelet points every pod (clusterDNS): the workload
        controllers' pods find each other by Service name (a PyTorchJob's master, a Ray head)."""
        config = self.state_dir / "Corefile"
        config.write_text(corefile(self.kubeconfig, ports["dns_health"], ports["dns_ready"]))
        binary = newest(bins, "coredns")
        self._spawn("coredns", [binary, "-conf", config], health=f"http://127.0.0.1:{ports['dns_ready']}/ready")

    def _start_node(self, bins: Path, ports: dict) -> None:
        """containerd, then the kubelet (which registers the Node), then kube-proxy (Service routing)."""
        for name, argv, health in self.node.commands(bins, ports["proxy_healthz"]):
            self._spawn(name, argv, health)
            if name == "containerd":
                self.node.wait_containerd()
            else:
                self._wait_ready(name)
            if name == "kubelet":
                self.node.wait_ready(KubeAPI(self.kubeconfig))

    def _wait_http(self, url: str, what: str, timeout: float) -> None:
        """Poll until url answers 200, failing early (with the log tail) if the process died."""
        ctx = ssl.create_default_context(cafile=self.ca_pem) if url.startswith("https") else None
        if ctx and not url.startswith(self.server):  # kcm/scheduler serve self-signed certs
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        if ctx and self.kubeconfig.exists():
            ctx.load_cert_chain(self.state_dir / "pki/admin.crt", self.state_dir / "pki/admin.key")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                             urllib.request.HTTPSHandler(context=ctx))
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.get("popen") and not p.get("stopped") and p["popen"].poll() is not None:
                    tail = (self.state_dir / "logs" / f"{p['name']}.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{p['name']} exited ({p['popen'].returncode}):\n{tail}")
            try:
                with opener.open(url, timeout=5) as resp:
                    if resp.status == 200:
                        return
            except (OSError, urllib.error.URLError) as e:
                last = e
            time.sleep(0.2)
        raise TimeoutError(f"{what} not ready at {url} after {timeout}s: {last}")

    def _save_state(self) -> None:
        procs = [{k: v for k, v in p.items() if k != "popen"} for p in self.procs]
        self.state_file.write_text(json.dumps({"server": self.server, "registry": self.registry,
                                               "images": self.images, "bin_dir": str(self.bin_dir),
                                               "owned_paths": self.owned_paths, "procs": procs}, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--state-dir", help="default: $KENV_CLUSTER_DIR or ~/.cache/kenv/cluster")
    args = parser.parse_args(argv)
    running = LocalCluster.attach(args.state_dir)
    if args.command == "up":
        if running and running.healthy():
            print(running.exports())
            return 0
        if running:  # stale or half-dead: clean up before starting afresh
            running.stop()
        cluster = LocalCluster(args.state_dir).start()
        atexit.unregister(cluster.stop)  # detached: the processes outlive this CLI until `down`
        print(cluster.exports())
    elif args.command == "down":
        cluster = running or LocalCluster(args.state_dir)
        count = len(cluster.pids())
        cluster.stop()
        left = cluster.node.leftovers()
        print(f"stopped {count} processes" if count else "not running", file=sys.stderr)
        if left:
            print("left on this machine:\n  " + "\n  ".join(left), file=sys.stderr)
            return 1
    else:
        up = bool(running and running.healthy())
        print(f"up {running.server} registry={running.registry} node={running.node_name}"
              if up and running else "down")
        return 0 if up else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
