"""A real Kubernetes control plane on 127.0.0.1, without Docker or a kubelet.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler (built from source by
hack/build-binaries.sh), one hand-made Node object the scheduler binds pods to, and Debian's
docker-registry. Pods never run: hack/fakelet.py plays the kubelet.

    python hack/localcluster.py up|down|status      # or hack/cluster up|down|status

Only stdlib, cryptography and pyyaml, so it works before the project itself is installed.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kubeapi import KubeAPI
from pki import cert_pem, issue_cert, key_pem, make_ca

REPO = Path(__file__).resolve().parent.parent
NODE_NAME = "kenv-node"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
REGISTRY_BIN = "/usr/bin/docker-registry"
CONTROLLERS = ",".join([
    "job-controller", "garbage-collector-controller", "namespace-controller", "serviceaccount-controller",
    "serviceaccount-token-controller", "ttl-after-finished-controller",
    "root-ca-certificate-publisher-controller",  # kube-root-ca.crt, which the pods' token volumes reference
    "deployment-controller", "replicaset-controller",  # so an installed chart's Deployment gets its pod
])


def default_state_dir() -> Path:
    return Path(os.environ.get("KENV_CLUSTER_DIR") or Path.home() / ".cache/kenv/cluster")


def ensure_no_proxy(env: dict[str, str] | os._Environ = os.environ) -> None:
    """Keep loopback traffic (apiserver -> webhooks, clients -> apiserver) away from any HTTP(S) proxy."""
    for key in ("NO_PROXY", "no_proxy"):
        have = [h for h in env.get(key, "").split(",") if h]
        env[key] = ",".join(have + [h for h in ("127.0.0.1", "localhost", "::1") if h not in have])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- processes


def _proc_start_time(pid: int) -> str | None:
    """Kernel start time of pid, to guard against pid reuse between `up` and `down`; None if gone/zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]


def _stop_pids(procs: list[dict], timeout: float = 15) -> None:
    """SIGTERM each process group (last started first), SIGKILL what is left, insist they are all gone."""
    def alive(p):
        if p.get("popen") is not None:
            return p["popen"].poll() is None
        return _proc_start_time(p["pid"]) == p["start"]

    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        for p in reversed(procs):
            if alive(p):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p["pid"], sig)
        deadline = time.monotonic() + wait
        while any(alive(p) for p in procs) and time.monotonic() < deadline:
            time.sleep(0.1)
    survivors = [f"{p['name']}({p['pid']})" for p in procs if alive(p)]
    if survivors:
        raise RuntimeError(f"processes survived SIGKILL: {survivors}")


class LocalCluster:
    def __init__(self, state_dir: str | Path | None = None, bin_dir: str | Path | None = None,
                 registry: bool = True, fakelet: bool = False):
        self.state_dir = Path(state_dir or default_state_dir()).resolve()
        self.bin_dir = Path(bin_dir) if bin_dir else None
        self.with_registry = registry
        self.with_fakelet = fakelet  # a hack/fakelet.py daemon, for clusters used by hand (`up --fakelet`)
        self.kubeconfig = self.state_dir / "kubeconfig"
        self.ca_pem = self.state_dir / "pki/ca.crt"
        self.state_file = self.state_dir / "state.json"
        self.server = ""
        self.registry = ""
        self.procs: list[dict] = []
        ensure_no_proxy()

    @property
    def kubectl(self) -> str:
        return str(self._bins() / "kubectl")

    # -- lifecycle

    def start(self) -> LocalCluster:
        t0 = time.monotonic()
        bins = self._bins()
        # Every start is a fresh cluster (new CA, empty etcd); registry contents are kept as a cache.
        shutil.rmtree(self.state_dir / "etcd", ignore_errors=True)
        for d in ("pki", "etcd", "logs", "registry"):
            (self.state_dir / d).mkdir(parents=True, exist_ok=True)
        ports = {k: free_port() for k in ("etcd", "etcd_peer", "apiserver", "kcm", "scheduler", "registry")}
        self.server = f"https://127.0.0.1:{ports['apiserver']}"
        pki = self._write_pki()
        try:
            self._start_etcd(bins, ports)
            self._start_apiserver(bins, ports, pki)
            self._wait_ready("kube-apiserver")
            self._start_controllers(bins, ports, pki)
            if self.with_registry:
                self._start_registry(ports["registry"])
            self._create_node()
            self._wait_ready("kube-controller-manager")
            self._wait_ready("kube-scheduler")
            if self.with_fakelet:
                self._spawn("fakelet", [sys.executable, REPO / "hack/fakelet.py", "--kubeconfig",
                                        self.kubeconfig, "--registry", self.registry,
                                        "--logs-dir", self.state_dir / "logs/pods"])
        except BaseException:
            self.stop()
            raise
        self._save_state()
        atexit.register(self.stop)  # an in-process cluster never outlives its Python process (`up` opts out)
        print(f"[localcluster] ready in {time.monotonic() - t0:.1f}s: {self.server}", file=sys.stderr)
        return self

    def stop(self) -> None:
        if self.procs:
            _stop_pids(self.procs)
        self.procs = []
        self.state_file.unlink(missing_ok=True)

    def pids(self) -> list[int]:
        return [p["pid"] for p in self.procs]

    def stop_component(self, name: str, timeout: float = 3) -> None:
        """Stop one process (etcd, kube-apiserver, registry...) for an outage; start_component undoes it.
        SIGKILL after `timeout`: with clients still connected, apiserver and etcd drain for 7-15s+."""
        proc = self._proc(name)
        _stop_pids([proc], timeout)
        proc["stopped"] = True

    def start_component(self, name: str, timeout: float = 60) -> None:
        """Start a stopped component again, same flags and port, and wait until it is healthy."""
        proc = self._proc(name)
        if not proc.get("stopped"):
            raise RuntimeError(f"{name} is running")
        self._spawn(name, proc["argv"], proc["health"], replace=proc)
        self._wait_ready(name, timeout)
        self._save_state()

    def _proc(self, name: str) -> dict:
        return next(p for p in self.procs if p["name"] == name)

    # -- `up` / `down` across processes

    @classmethod
    def attach(cls, state_dir: str | Path | None = None) -> LocalCluster | None:
        """The cluster a previous `up` left running in state_dir, if all its processes are still there."""
        self = cls(state_dir)
        if not self.state_file.exists():
            return None
        state = json.loads(self.state_file.read_text())
        self.server, self.registry, self.procs = state["server"], state["registry"], state["procs"]
        self.bin_dir = Path(state["bin_dir"])
        return self

    def healthy(self) -> bool:
        if not self.procs or any(_proc_start_time(p["pid"]) != p["start"] for p in self.procs):
            return False
        try:
            return KubeAPI(self.kubeconfig).request("GET", "/readyz", timeout=5) == "ok"
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
                out = subprocess.run(["bash", str(REPO / "hack/build-binaries.sh")], check=True,
                                     stdout=subprocess.PIPE, text=True).stdout
                self.bin_dir = Path(out.strip().splitlines()[-1])
        return self.bin_dir

    def _spawn(self, name: str, argv: list, health: str | None = None, replace: dict | None = None) -> None:
        env = dict(os.environ)
        ensure_no_proxy(env)
        with open(self.state_dir / "logs" / f"{name}.log", "ab") as log:
            # A new session per component: killpg reaches its children, and it survives the CLI exiting.
            popen = subprocess.Popen([str(a) for a in argv], stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        proc = {"name": name, "pid": popen.pid, "start": _proc_start_time(popen.pid), "popen": popen,
                "argv": [str(a) for a in argv], "health": health}
        if replace is None:
            self.procs.append(proc)
        else:  # keep its place: stop() goes through the list backwards, dependants first
            self.procs[self.procs.index(replace)] = proc

    def _wait_ready(self, name: str, timeout: float = 60) -> None:
        health = self._proc(name)["health"]
        if health:
            self._wait_http(health, name, timeout)

    def _write_pki(self) -> Path:
        pki = self.state_dir / "pki"
        ca = make_ca("kenv-local-ca")
        serving = issue_cert(ca, "kube-apiserver", hosts=(
            "127.0.0.1", "localhost", "10.0.0.1", "kubernetes", "kubernetes.default",
            "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"))
        admin = issue_cert(ca, "kenv-admin", orgs=("system:masters",), client=True)
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        files = {"ca.crt": cert_pem(ca[0]), "ca.key": key_pem(ca[1]), "apiserver.crt": cert_pem(serving[0]),
                 "apiserver.key": key_pem(serving[1]), "admin.crt": cert_pem(admin[0]),
                 "admin.key": key_pem(admin[1]), "sa.key": key_pem(sa_key),
                 "sa.pub": sa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                           serialization.PublicFormat.SubjectPublicKeyInfo)}
        for name, data in files.items():
            (pki / name).write_bytes(data)
            (pki / name).chmod(0o600)
        b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
        kubeconfig = {
            "apiVersion": "v1", "kind": "Config", "current-context": "kenv-local",
            "clusters": [{"name": "kenv-local", "cluster": {
                "server": self.server, "certificate-authority-data": b64(files["ca.crt"])}}],
            "users": [{"name": "kenv-admin", "user": {
                "client-certificate-data": b64(files["admin.crt"]),
                "client-key-data": b64(files["admin.key"])}}],
            "contexts": [{"name": "kenv-local", "context": {"cluster": "kenv-local", "user": "kenv-admin"}}],
        }
        self.kubeconfig.write_text(yaml.safe_dump(kubeconfig))
        self.kubeconfig.chmod(0o600)
        return pki

    def _start_etcd(self, bins: Path, ports: dict) -> None:
        client, peer = f"http://127.0.0.1:{ports['etcd']}", f"http://127.0.0.1:{ports['etcd_peer']}"
        self._spawn("etcd", health=f"{client}/health", argv=[
            bins / "etcd", "--name=kenv", f"--data-dir={self.state_dir / 'etcd'}", "--unsafe-no-fsync",
            f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=kenv={peer}", "--log-level=warn"])
        self._wait_ready("etcd")

    def _start_apiserver(self, bins: Path, ports: dict, pki: Path) -> None:
        self._spawn("kube-apiserver", health=f"{self.server}/readyz", argv=[
            bins / "kube-apiserver", f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
            f"--secure-port={ports['apiserver']}", "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
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
            "--service-cluster-ip-range=10.0.0.0/24", "--allow-privileged=true",
            "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,MutatingAdmissionWebhook,"
            "ValidatingAdmissionWebhook",
            # It taints every new Node not-ready until the node-lifecycle controller, which we don't run
            # (nothing would heartbeat), lifts it: the scheduler would never bind to kenv-node.
            "--disable-admission-plugins=TaintNodesByCondition",
            # The default reconciler would publish 127.0.0.1 as the `kubernetes` Service endpoint, which
            # Endpoints validation rejects (loopback); nothing in-cluster needs to reach the apiserver here.
            "--endpoint-reconciler-type=none",
            f"--cert-dir={pki / 'apiserver-certs'}"])

    def _start_controllers(self, bins: Path, ports: dict, pki: Path) -> None:
        kc = str(self.kubeconfig)
        common = ["--kubeconfig", kc, "--authentication-kubeconfig", kc, "--authorization-kubeconfig", kc,
                  "--leader-elect=false", "--bind-address=127.0.0.1"]
        self._spawn("kube-controller-manager", health=f"https://127.0.0.1:{ports['kcm']}/healthz", argv=[
            bins / "kube-controller-manager", *common, f"--secure-port={ports['kcm']}",
            f"--controllers={CONTROLLERS}", "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
            f"--cert-dir={pki / 'kcm'}"])
        self._spawn("kube-scheduler", health=f"https://127.0.0.1:{ports['scheduler']}/healthz", argv=[
            bins / "kube-scheduler", *common, f"--secure-port={ports['scheduler']}",
            f"--cert-dir={pki / 'scheduler'}"])

    def _start_registry(self, port: int) -> None:
        self.registry = f"127.0.0.1:{port}"
        config = {"version": 0.1, "log": {"level": "info"},
                  "storage": {"filesystem": {"rootdirectory": str(self.state_dir / "registry")},
                              "delete": {"enabled": True}},
                  "http": {"addr": self.registry}}
        cfg = self.state_dir / "registry.yml"
        cfg.write_text(yaml.safe_dump(config))
        self._spawn("registry", [REGISTRY_BIN, "serve", cfg], health=f"http://{self.registry}/v2/")
        self._wait_ready("registry")

    def _create_node(self) -> None:
        """A Node with no kubelet behind it. The node-lifecycle controller is not started, so nothing marks it
        NotReady or taints it when its heartbeat never comes."""
        api = KubeAPI(self.kubeconfig)
        resources = {"cpu": "32", "memory": "64Gi", "pods": "500", "ephemeral-storage": "500Gi"}
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE_NAME, "labels": {
            "kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
            "kenv.dev/fake-node": "true"}}}
        try:
            api.request("POST", "/api/v1/nodes", node)
        except urllib.error.HTTPError as e:
            if e.code != 409:
                raise
        status = {"status": {
            "capacity": resources, "allocatable": resources,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "fakelet",
                            "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                          {"type": "Hostname", "address": NODE_NAME}],
            "nodeInfo": {"kubeletVersion": "fakelet", "containerRuntimeVersion": "buildah://host",
                         "operatingSystem": "linux", "architecture": "amd64"}}}
        api.request("PATCH", f"/api/v1/nodes/{NODE_NAME}/status", status, "application/merge-patch+json")

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
                                               "bin_dir": str(self.bin_dir), "procs": procs}, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--fakelet", action="store_true", help="up: also run hack/fakelet.py as a daemon")
    parser.add_argument("--state-dir", help="default: $KENV_CLUSTER_DIR or ~/.cache/kenv/cluster")
    args = parser.parse_args(argv)
    running = LocalCluster.attach(args.state_dir)
    if args.command == "up":
        if running and running.healthy():
            print(running.exports())
            return 0
        if running:  # stale or half-dead: clean up before starting afresh
            running.stop()
        cluster = LocalCluster(args.state_dir, fakelet=args.fakelet).start()
        atexit.unregister(cluster.stop)  # detached: the processes outlive this CLI until `down`
        print(cluster.exports())
    elif args.command == "down":
        if running:
            count = len(running.pids())
            running.stop()
            print(f"stopped {count} processes", file=sys.stderr)
        else:
            print("not running", file=sys.stderr)
    else:
        up = bool(running and running.healthy())
        print(f"up {running.server} registry={running.registry}" if up else "down")
        return 0 if up else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
