"""Pure configuration of the local cluster's real node: containerd, CNI, kubelet and kube-proxy.

Every function returns text or a dict from paths and addresses; hack/node.py writes them and starts the daemons.
One address serves everything pods and the host share: the CNI bridge's own address NODE_IP is the node's
InternalIP, the API server's advertise address (the `kubernetes` Service endpoint) and the registry's host, so
containerd (pulls), pods (pushes, API calls) and host tools use the same names.
"""

from __future__ import annotations

import base64
import json
import socket
from dataclasses import dataclass
from pathlib import Path

NODE_IP = "10.244.0.1"
POD_SUBNET = "10.244.0.0/24"
SERVICE_CIDR = "10.0.0.0/24"
CLUSTER_DOMAIN = "cluster.local"
BRIDGE = "kenv0"
CNI_NETWORK = "kenv"
CGROUP_ROOT = "kenv"  # every pod cgroup lives under /sys/fs/cgroup/<controller>/kenv
KUBELET_PORT = 10250
KUBELET_HEALTHZ_PORT = 10248
MAX_PODS = 250
UNIX_SOCKET_MAX = 107  # sun_path is 108 bytes with the trailing NUL


def node_name() -> str:
    """The kubelet names its node after the host, as kubeadm and kind do."""
    return socket.gethostname().split(".")[0].lower()


@dataclass(frozen=True)
class NodePaths:
    """Where one node keeps its configuration and state: all under state_dir/node, nothing in /var or /etc."""

    root: Path

    @property
    def containerd_config(self) -> Path:
        return self.root / "containerd/config.toml"

    @property
    def containerd_root(self) -> Path:
        return self.root / "containerd/root"

    @property
    def containerd_state(self) -> Path:
        return self.root / "containerd/state"

    @property
    def containerd_socket(self) -> Path:
        return self.root / "containerd/containerd.sock"

    @property
    def registry_hosts(self) -> Path:
        return self.root / "containerd/certs.d"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni/net.d"

    @property
    def cni_ipam_dir(self) -> Path:
        return self.root / "cni/ipam"

    @property
    def kubelet_dir(self) -> Path:
        return self.root / "kubelet"

    @property
    def kubelet_root(self) -> Path:
        return self.root / "kubelet/root"

    @property
    def kube_proxy_dir(self) -> Path:
        return self.root / "kube-proxy"

    def check(self) -> None:
        if len(str(self.containerd_socket)) > UNIX_SOCKET_MAX:
            raise ValueError(f"state directory too deep for containerd's socket ({self.containerd_socket}): "
                             f"use a shorter KENV_CLUSTER_DIR")


def _toml_string(value: str | Path) -> str:
    return json.dumps(str(value))  # TOML basic strings escape like JSON for the characters paths hold


def containerd_config(paths: NodePaths, pause_image: str, runc: str = "/usr/bin/runc") -> str:
    """containerd 1.6 CRI configuration (config version 2). Why each non-default value is set:
    - restrict_oom_score_adj: the sandbox may not hold CAP_SYS_RESOURCE, so runc must not lower oom_score_adj;
    - sandbox_image: the pause image built here (registry.k8s.io is unreachable);
    - netns_mounts_under_state_dir and runc Root: nothing of ours outside paths.root;
    - registry config_path: hosts.toml per registry, so the local registry is pulled over plain HTTP."""
    q = _toml_string
    return f"""version = 2
root = {q(paths.containerd_root)}
state = {q(paths.containerd_state)}
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = {q(paths.containerd_socket)}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {q(pause_image)}
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_unprivileged_ports = true
  enable_unprivileged_icmp = true
  max_concurrent_downloads = 3
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = {q(paths.cni_conf_dir)}
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = {q(runc)}
        Root = {q(paths.containerd_state / "runc")}
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = {q(paths.registry_hosts)}
"""


def registry_hosts_toml(registry: str) -> str:
    """containerd's hosts.toml for a plain-HTTP registry at host:port."""
    url = f"http://{registry}"
    return f"""server = {_toml_string(url)}

[host.{_toml_string(url)}]
  capabilities = ["pull", "resolve"]
  skip_verify = true
"""


def cni_conflist(paths: NodePaths) -> dict:
    """A bridge network: the bridge holds NODE_IP as the pods' gateway, pod traffic leaving the subnet is
    masqueraded (package registries through the machine's normal route), hairpin lets a pod reach itself
    through a Service; portmap serves hostPort."""
    return {
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": True, "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": str(paths.cni_ipam_dir),
                      "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(paths: NodePaths, pki: Path) -> dict:
    """KubeletConfiguration for this machine kind: cgroup v1 through cgroupfs (no systemd), no swap check,
    no lowered oom_score_adj (CAP_SYS_RESOURCE may be missing), webhook authn/z so the API server's client
    certificate opens logs/exec/port-forward, and no image GC or eviction getting in a test's way."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "containerRuntimeEndpoint": f"unix://{paths.containerd_socket}",
        "address": NODE_IP,
        "port": KUBELET_PORT,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": KUBELET_HEALTHZ_PORT,
        "readOnlyPort": 0,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{CGROUP_ROOT}",
        "cgroupsPerQOS": True,
        "enforceNodeAllocatable": ["pods"],
        "failCgroupV1": False,
        "failSwapOn": False,
        "oomScoreAdj": 0,
        "maxPods": MAX_PODS,
        "serializeImagePulls": False,
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(pki / "ca.crt")}},
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(pki / "kubelet-serving.crt"),
        "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "podLogsDir": str(paths.kubelet_dir / "pod-logs"),
        "volumePluginDir": str(paths.kubelet_dir / "volume-plugins"),
        "resolvConf": "/etc/resolv.conf",  # what CoreDNS forwards to, and pods with dnsPolicy Default get
        "clusterDomain": CLUSTER_DOMAIN,
        "clusterDNS": [NODE_IP],  # CoreDNS, a host process on the node address (hack/localcluster.py)
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                         "nodefs.inodesFree": "1%"},
        "nodeStatusUpdateFrequency": "5s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "60s",
        "shutdownGracePeriod": "0s",
    }


def kube_proxy_config(paths: NodePaths, healthz_port: int, metrics_port: int) -> dict:
    """KubeProxyConfiguration: iptables mode, and nothing that changes the machine's conntrack or
    route_localnet settings (they are left as found)."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(paths.kube_proxy_dir / "kubeconfig")},
        "hostnameOverride": node_name(),
        "mode": "iptables",
        "clusterCIDR": POD_SUBNET,
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "oomScoreAdj": 0,
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "iptables": {"localhostNodePorts": False, "syncPeriod": "10s", "minSyncPeriod": "0s"},
    }


def kubeconfig(server: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes, user: str) -> dict:
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": "kenv-local",
        "clusters": [{"name": "kenv-local", "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}],
        "users": [{"name": user, "user": {"client-certificate-data": b64(cert_pem),
                                          "client-key-data": b64(key_pem)}}],
        "contexts": [{"name": "kenv-local", "context": {"cluster": "kenv-local", "user": user}}],
    }


def corefile(kubeconfig_path: Path, health_port: int, ready_port: int) -> str:
    """The cluster DNS on the node address: Services and pods of cluster.local from the API server (as in kind and
    kubeadm clusters), everything else forwarded to the machine's own resolver."""
    return f"""\
.:53 {{
    bind {NODE_IP}
    errors
    health 127.0.0.1:{health_port}
    ready 127.0.0.1:{ready_port}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig_path} kenv-local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    forward . /etc/resolv.conf
    cache 30
}}
"""
