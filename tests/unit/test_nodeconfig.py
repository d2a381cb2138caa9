"""The local node's configuration files (hack/nodeconfig.py): pure functions, checked by parsing what they write."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "hack"))

from nodeconfig import (  # noqa: E402
    BRIDGE,
    CGROUP_ROOT,
    NODE_IP,
    POD_SUBNET,
    NodePaths,
    cni_conflist,
    containerd_config,
    corefile,
    kube_proxy_config,
    kubelet_config,
    registry_hosts_toml,
)

PATHS = NodePaths(Path("/state with space/node"))


def test_containerd_config_keeps_everything_under_the_state_dir_and_uses_the_local_pause_image():
    config = tomllib.loads(containerd_config(PATHS, "10.244.0.1:5000/kenv/pause:abc"))
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert config["version"] == 2
    assert config["root"] == "/state with space/node/containerd/root"
    assert config["grpc"]["address"] == "/state with space/node/containerd/containerd.sock"
    assert cri["sandbox_image"] == "10.244.0.1:5000/kenv/pause:abc"
    assert cri["restrict_oom_score_adj"] is True  # no CAP_SYS_RESOURCE here
    assert cri["netns_mounts_under_state_dir"] is True
    runc = cri["containerd"]["runtimes"]["runc"]
    assert runc["options"]["BinaryName"] == "/usr/bin/runc" and runc["options"]["SystemdCgroup"] is False
    assert runc["options"]["Root"].startswith("/state with space/node/")
    assert cri["cni"]["conf_dir"] == "/state with space/node/cni/net.d"
    assert cri["registry"]["config_path"] == "/state with space/node/containerd/certs.d"
    assert "io.containerd.internal.v1.opt" in config["disabled_plugins"]  # it would create /opt/containerd


def test_registry_hosts_file_pulls_over_plain_http():
    hosts = tomllib.loads(registry_hosts_toml("10.244.0.1:5000"))
    assert hosts["server"] == "http://10.244.0.1:5000"
    assert hosts["host"]["http://10.244.0.1:5000"]["capabilities"] == ["pull", "resolve"]


def test_cni_bridge_gateway_is_the_node_address_and_state_stays_ours():
    bridge, portmap = cni_conflist(PATHS)["plugins"]
    assert bridge["bridge"] == BRIDGE and bridge["isGateway"] and bridge["ipMasq"] and bridge["hairpinMode"]
    assert bridge["ipam"]["ranges"] == [[{"subnet": POD_SUBNET, "gateway": NODE_IP}]]
    assert bridge["ipam"]["dataDir"].startswith("/state with space/node/")
    assert portmap["capabilities"] == {"portMappings": True}


def test_kubelet_runs_on_cgroup_v1_without_systemd_or_privileged_oom_settings():
    config = kubelet_config(PATHS, Path("/pki"))
    assert config["cgroupDriver"] == "cgroupfs" and config["failCgroupV1"] is False
    assert config["cgroupRoot"] == f"/{CGROUP_ROOT}" and config["oomScoreAdj"] == 0
    assert config["address"] == NODE_IP and config["readOnlyPort"] == 0
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["authorization"]["mode"] == "Webhook"
    assert config["authentication"]["x509"]["clientCAFile"] == "/pki/ca.crt"
    assert config["containerRuntimeEndpoint"] == "unix:///state with space/node/containerd/containerd.sock"
    for key in ("podLogsDir", "volumePluginDir"):
        assert config[key].startswith("/state with space/node/")


@pytest.mark.parametrize("key", ["maxPerCore", "min"])
def test_kube_proxy_leaves_conntrack_limits_alone(key):
    config = kube_proxy_config(PATHS, 10256, 10249)
    assert config["conntrack"][key] == 0  # 0: do not change the machine's setting
    assert config["iptables"]["localhostNodePorts"] is False  # no route_localnet sysctl
    assert config["mode"] == "iptables" and config["clusterCIDR"] == POD_SUBNET
    assert config["healthzBindAddress"] == "127.0.0.1:10256" and config["oomScoreAdj"] == 0


def test_a_too_deep_state_dir_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="KENV_CLUSTER_DIR"):
        NodePaths(Path("/" + "d" * 100)).check()


def test_pods_resolve_through_coredns_on_the_node_address():
    config = kubelet_config(PATHS, Path("/pki"))
    assert config["clusterDNS"] == [NODE_IP] and config["clusterDomain"] == "cluster.local"
    lines = [line.strip() for line in corefile(Path("/state/kubeconfig"), 1001, 1002).splitlines()]
    assert f"bind {NODE_IP}" in lines and "forward . /etc/resolv.conf" in lines
    assert "kubernetes cluster.local in-addr.arpa ip6.arpa {" in lines
    assert "kubeconfig /state/kubeconfig kenv-local" in lines  # the admin kubeconfig's context
    assert "health 127.0.0.1:1001" in lines and "ready 127.0.0.1:1002" in lines
