"""The local cluster's real node: Debian's containerd and runc, a CNI bridge, a kubelet and kube-proxy.

`Node` prepares the machine (bridge, sysctls, cgroup root), names the daemons LocalCluster starts, drains the
node and, on `down`, removes every trace of it: processes, mounts, cgroups, the bridge, iptables chains and the
sysctls it changed. Teardown works from names alone (state directory, bridge, cgroup root), so it also cleans
up after a cluster whose Python process died. One node per machine: kubelets and kube-proxies share fixed
iptables chains and ports, so a second `up` refuses to start while another node's processes run.

Only stdlib and pyyaml, so it works before the project itself is installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import time
import urllib.error
from pathlib import Path

import yaml

from nodeconfig import (
    BRIDGE,
    CGROUP_ROOT,
    CNI_NETWORK,
    KUBELET_HEALTHZ_PORT,
    NODE_IP,
    POD_SUBNET,
    NodePaths,
    cni_conflist,
    containerd_config,
    kube_proxy_config,
    kubelet_config,
    node_name,
    registry_hosts_toml,
)
from procs import kill_and_wait, pids_mentioning, proc_start_time

MARKER = Path(os.environ.get("KENV_NODE_MARKER", "/run/kenv-node.json"))
# libcni's result cache: containerd 1.6 offers no setting for it, so entries of our network are removed by name.
CNI_CACHE = Path("/var/lib/cni")
CGROUP_FS = Path("/sys/fs/cgroup")
# Sysctls the node needs (ip_forward for pod traffic; bridge-nf so Service traffic between pods on the bridge
# passes kube-proxy's rules) and those the kubelet sets itself; all are put back as found on `down`.
SYSCTLS_SET = {"net/ipv4/ip_forward": "1", "net/bridge/bridge-nf-call-iptables": "1"}
SYSCTLS_KUBELET = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
                   "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes", "net/ipv4/conf/all/route_localnet")
OUR_CHAIN_PREFIXES = ("KUBE-", "CNI-")
BUILTIN_CHAINS = {"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"}


class NodeBusy(RuntimeError):
    pass


def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key


def read_sysctls(keys) -> dict[str, str]:
    values = {}
    for key in keys:
        with contextlib.suppress(OSError):
            values[key] = _sysctl_path(key).read_text().strip()
    return values


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


class Node:
    def __init__(self, state_dir: Path):
        self.state_dir = Path(state_dir)
        self.paths = NodePaths(self.state_dir / "node")
        self.name = node_name()

    # -- before the daemons start

    def claim(self) -> None:
        """Take the machine's one node slot; clean up after a dead previous owner first."""
        if os.geteuid() != 0:
            raise PermissionError("a real node needs root (containerd, runc, the kubelet, iptables)")
        if MARKER.exists():
            previous = json.loads(MARKER.read_text())
            if previous["state_dir"] != str(self.state_dir) and _any_alive(previous.get("pids", [])):
                raise NodeBusy(f"another local node runs from {previous['state_dir']}: stop it with "
                               f"`KENV_CLUSTER_DIR={previous['state_dir']} hack/cluster down`, or point the "
                               f"tests at it with KENV_TEST_KUBECONFIG")
            Node(Path(previous["state_dir"])).cleanup(previous.get("sysctls", {}))
        self.paths.check()
        MARKER.write_text(json.dumps({"state_dir": str(self.state_dir), "pids": [],
                                      "sysctls": read_sysctls([*SYSCTLS_SET, *SYSCTLS_KUBELET])}))

    def record_pids(self, pids: list[tuple[int, str | None]]) -> None:
        if MARKER.exists():
            state = json.loads(MARKER.read_text())
            state["pids"] = pids
            MARKER.write_text(json.dumps(state))

    def prepare_network(self) -> None:
        """The bridge (so NODE_IP exists before the API server and registry bind it), sysctls, the cgroup root."""
        if not Path(f"/sys/class/net/{BRIDGE}").exists():
            _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "replace", f"{NODE_IP}/24", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        for key, value in SYSCTLS_SET.items():
            with contextlib.suppress(OSError):
                _sysctl_path(key).write_text(value)
        self._make_cgroup_root()

    def configure(self, pki: Path, registry: str, pause_image: str, proxy_ports: tuple[int, int],
                  kubeconfigs: dict[str, dict]) -> None:
        """Every daemon's configuration file, under paths.root."""
        p = self.paths
        for d in (p.containerd_root, p.containerd_state, p.cni_conf_dir, p.cni_ipam_dir, p.kubelet_root,
                  p.kube_proxy_dir, p.registry_hosts / registry):
            d.mkdir(parents=True, exist_ok=True)
        p.containerd_config.write_text(containerd_config(p, pause_image))
        (p.registry_hosts / registry / "hosts.toml").write_text(registry_hosts_toml(registry))
        (p.cni_conf_dir / "10-kenv.conflist").write_text(json.dumps(cni_conflist(p), indent=1))
        (p.kubelet_dir / "config.yaml").write_text(yaml.safe_dump(kubelet_config(p, pki)))
        (p.kube_proxy_dir / "config.yaml").write_text(yaml.safe_dump(kube_proxy_config(p, *proxy_ports)))
        for component, config in kubeconfigs.items():
            path = p.root / component / "kubeconfig"
            path.write_text(yaml.safe_dump(config))
            path.chmod(0o600)

    def _make_cgroup_root(self) -> None:
        """The kubelet refuses a cgroupRoot that does not exist in every hierarchy; a new v1 cpuset cgroup
        must be given its parent's cpus and mems before a process can join it."""
        for hierarchy in self._hierarchies():
            root = hierarchy / CGROUP_ROOT
            root.mkdir(exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):
                if (root / name).exists() and not (root / name).read_text().strip():
                    (root / name).write_text((hierarchy / name).read_text())

    @staticmethod
    def _hierarchies() -> list[Path]:
        return sorted(p for p in CGROUP_FS.iterdir() if p.is_dir() and not p.is_symlink()) \
            if CGROUP_FS.exists() else []

    # -- the daemons LocalCluster starts, in order: (name, argv, health URL or None)

    def commands(self, bins: Path, proxy_healthz_port: int) -> list[tuple[str, list, str | None]]:
        p = self.paths
        return [
            ("containerd", ["containerd", "--config", p.containerd_config], None),
            ("kubelet", [bins / "kubelet", f"--config={p.kubelet_dir / 'config.yaml'}",
                         f"--kubeconfig={p.kubelet_dir / 'kubeconfig'}", f"--root-dir={p.kubelet_root}",
                         f"--cert-dir={p.kubelet_dir / 'pki'}", f"--hostname-override={self.name}",
                         f"--node-ip={NODE_IP}", "--v=1"],
             f"http://127.0.0.1:{KUBELET_HEALTHZ_PORT}/healthz"),
            ("kube-proxy", [bins / "kube-proxy", f"--config={p.kube_proxy_dir / 'config.yaml'}", "--v=1"],
             f"http://127.0.0.1:{proxy_healthz_port}/healthz"),
        ]

    def wait_containerd(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.paths.containerd_socket.exists() and self.ctr("version", check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise TimeoutError(f"containerd did not answer on {self.paths.containerd_socket} within {timeout}s")

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return _run("ctr", "--address", str(self.paths.containerd_socket), "--namespace", "k8s.io", *args,
                    check=check)

    def wait_ready(self, api, timeout: float = 60) -> dict:
        """The Node object the kubelet registered, once its Ready condition is True."""
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:
                node = api.request("GET", f"/api/v1/nodes/{self.name}")
                ready = [c for c in node.get("status", {}).get("conditions", []) if c["type"] == "Ready"]
                if ready and ready[0]["status"] == "True":
                    return node
                last = ready
            except urllib.error.HTTPError as error:
                last = error
            time.sleep(0.3)
        raise TimeoutError(f"node {self.name} not Ready after {timeout}s: {last}")

    def container_pids(self, pod_uid: str, container_id: str) -> list[int]:
        """The processes of one container, from its cgroup (cgroupfs driver: .../pod<uid>/<container id>)."""
        cid = container_id.split("://", 1)[-1]
        pids: set[int] = set()
        for procs in (CGROUP_FS / "pids" / CGROUP_ROOT).glob(f"**/pod{pod_uid}/{cid}/cgroup.procs"):
            with contextlib.suppress(OSError):
                pids |= {int(p) for p in procs.read_text().split()}
        return sorted(pids)

    def kill_container(self, pod_uid: str, container_id: str) -> None:
        """SIGKILL every process of a container, as the OOM killer would; its kubelet decides what follows."""
        pids = self.container_pids(pod_uid, container_id)
        if not pids:
            raise RuntimeError(f"no processes found for container {container_id} of pod {pod_uid}")
        kill_and_wait(pids)

    # -- teardown

    def running_tasks(self) -> list[str]:
        if not self.paths.containerd_socket.exists():
            return []
        result = self.ctr("tasks", "ls", check=False)
        return [line.split()[0] for line in result.stdout.splitlines()[1:] if "RUNNING" in line]

    def drain(self, api, timeout: float = 60) -> None:
        """Delete every pod and let the kubelet stop its containers (and CNI release their addresses). One
        collection DELETE per namespace: a load test leaves thousands of (gated) pods, one DELETE each took
        minutes."""
        with contextlib.suppress(OSError, urllib.error.URLError):
            for namespace in sorted(n["metadata"]["name"] for n in api.request("GET", "/api/v1/namespaces")["items"]):
                with contextlib.suppress(OSError, urllib.error.URLError):  # one slow namespace: on to the next
                    api.request("DELETE", f"/api/v1/namespaces/{namespace}/pods", {"gracePeriodSeconds": 0},
                                timeout=120)
        deadline = time.monotonic() + timeout
        while self.running_tasks() and time.monotonic() < deadline:
            time.sleep(0.3)

    def cleanup(self, sysctls: dict[str, str] | None = None) -> None:
        """Remove what the node left, whatever state it died in. Idempotent."""
        kill_and_wait(list(pids_mentioning(str(self.paths.root))))
        self._kill_cgroup_members()
        self._unmount_under(self.paths.root)
        self._remove_cgroups()
        self._remove_iptables_chains()
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            _run("ip", "link", "del", BRIDGE, check=False)
        if sysctls is None and MARKER.exists():
            marker = json.loads(MARKER.read_text())
            sysctls = marker.get("sysctls", {}) if marker.get("state_dir") == str(self.state_dir) else {}
        for key, value in (sysctls or {}).items():
            with contextlib.suppress(OSError):
                if _sysctl_path(key).read_text().strip() != value:
                    _sysctl_path(key).write_text(value)
        self._remove_shim_sockets()
        self._remove_cni_cache()
        if MARKER.exists() and json.loads(MARKER.read_text()).get("state_dir") == str(self.state_dir):
            MARKER.unlink()

    def _cgroup_dirs(self) -> list[Path]:
        """Our cgroups in every hierarchy, deepest first."""
        dirs = []
        for hierarchy in self._hierarchies():
            root = hierarchy / CGROUP_ROOT
            if root.is_dir():
                dirs += [Path(d) for d, _, _ in os.walk(root)]
        return sorted(dirs, key=lambda d: len(d.parts), reverse=True)

    def _kill_cgroup_members(self) -> None:
        pids = set()
        for d in self._cgroup_dirs():
            with contextlib.suppress(OSError):
                pids |= {int(p) for p in (d / "cgroup.procs").read_text().split()}
        kill_and_wait(sorted(pids - {os.getpid()}))

    def _remove_cgroups(self) -> None:
        for _ in range(50):  # rmdir fails while the kernel still counts an exiting task
            left = []
            for d in self._cgroup_dirs():
                try:
                    d.rmdir()
                except FileNotFoundError:
                    pass
                except OSError:
                    left.append(d)
            if not left:
                return
            time.sleep(0.1)

    @staticmethod
    def _unmount_under(root: Path) -> None:
        for mountpoint in sorted(mounts_under(root), key=len, reverse=True):
            _run("umount", "-l", mountpoint, check=False)

    @staticmethod
    def _remove_iptables_chains() -> None:
        for tool, table, rules, ours in _our_chains():
            for rule in rules:  # jumps from the built-in chains first, then our chains themselves
                words = rule.split()
                if words[:1] == ["-A"] and words[1] in BUILTIN_CHAINS and _jump_target(words) in ours:
                    _run(tool, "-t", table, "-D", *shlex.split(rule[3:]), check=False)
            for chain in ours:
                _run(tool, "-t", table, "-F", chain, check=False)
            for chain in ours:
                _run(tool, "-t", table, "-X", chain, check=False)

    @staticmethod
    def _remove_shim_sockets() -> None:
        """containerd 1.6 puts shim sockets in /run/containerd/s whatever its state dir; ours are gone with
        their shims, so drop the folders if nothing else (another containerd) uses them."""
        for d in (Path("/run/containerd/s"), Path("/run/containerd")):
            with contextlib.suppress(OSError):
                d.rmdir()

    @staticmethod
    def _remove_cni_cache() -> None:
        for entry in (CNI_CACHE / "results").glob(f"{CNI_NETWORK}-*"):
            entry.unlink(missing_ok=True)
        for d in (CNI_CACHE / "results", CNI_CACHE):  # only if empty: another CNI user may keep its own
            with contextlib.suppress(OSError):
                d.rmdir()

    # -- what a clean machine must not have

    def leftovers(self) -> list[str]:
        found = [f"process {pid}: {_cmdline(pid)}" for pid in pids_mentioning(str(self.paths.root))]
        found += [f"mount {m}" for m in mounts_under(self.paths.root)]
        found += [f"cgroup {d}" for d in self._cgroup_dirs()]
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            found.append(f"network interface {BRIDGE}")
        for tool, table, _, ours in _our_chains():
            found += [f"{tool} -t {table} chain {c}" for c in sorted(ours)]
        found += [f"CNI cache entry {e}" for e in (CNI_CACHE / "results").glob(f"{CNI_NETWORK}-*")]
        found += [f"route to {POD_SUBNET}"] if POD_SUBNET in _run("ip", "route", check=False).stdout else []
        return found


def mounts_under(root: Path) -> list[str]:
    prefix = str(root).rstrip("/") + "/"
    points = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix) or point == str(root):
                points.append(point)
    return points


def _jump_target(words: list[str]) -> str | None:
    for flag in ("-j", "-g"):
        if flag in words and words.index(flag) + 1 < len(words):
            return words[words.index(flag) + 1]
    return None


def _our_chains():
    """(tool, table, that table's rules, the KUBE-*/CNI-* chains in it) for every iptables table."""
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle", "raw"):
            rules = _run(tool, "-t", table, "-S", check=False).stdout.splitlines()
            ours = {r.split()[1] for r in rules if r.startswith("-N ") and r.split()[1].startswith(OUR_CHAIN_PREFIXES)}
            yield tool, table, rules, ours


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
    return "?"


def _any_alive(pids: list) -> bool:
    return any(proc_start_time(pid) == start for pid, start in pids)
