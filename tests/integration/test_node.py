"""`hack/cluster up` gives a real node; `hack/cluster down` leaves nothing of it on the machine.

It runs before the session's shared cluster starts (marker own_cluster, see conftest.py): one node per machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from kubeapi import KubeAPI
from node import SYSCTLS_KUBELET, SYSCTLS_SET, Node, read_sysctls
from nodeconfig import BRIDGE, node_name

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.own_cluster]


def iptables_chains() -> set[str]:
    chains = set()
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle", "raw"):
            out = subprocess.run([tool, "-t", table, "-S"], capture_output=True, text=True).stdout
            chains |= {f"{tool}/{table}/{line.split()[1]}" for line in out.splitlines() if line.startswith("-N ")}
    return chains


def cluster_cli(state_dir: Path, command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "hack/localcluster.py"), command, "--state-dir",
                           str(state_dir)], capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(os.environ.get("KENV_TEST_KUBECONFIG") is not None, reason="tests an external cluster")
def test_cluster_up_runs_pods_and_down_leaves_the_machine_clean() -> None:
    sysctls_before = read_sysctls([*SYSCTLS_SET, *SYSCTLS_KUBELET])
    chains_before = iptables_chains()
    state_dir = Path(tempfile.mkdtemp(prefix="kenv-node-test-"))
    started = time.monotonic()
    up = cluster_cli(state_dir, "up")
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        print(f"\nhack/cluster up: {time.monotonic() - started:.1f}s")
        exports = dict(line.removeprefix("export ").split("=", 1) for line in up.stdout.splitlines())
        api = KubeAPI(exports["KUBECONFIG"])
        node = api.request("GET", f"/api/v1/nodes/{node_name()}")
        assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.34.4"
        assert Path(f"/sys/class/net/{BRIDGE}").exists()
        state = yaml.safe_load((state_dir / "state.json").read_text())
        pause = state["images"]["pause"]
        api.request("POST", "/api/v1/namespaces/default/pods", {"metadata": {"name": "sleeper"}, "spec": {
            "containers": [{"name": "c", "image": pause}]}})
        deadline = time.monotonic() + 60
        while api.request("GET", "/api/v1/namespaces/default/pods/sleeper")["status"].get("phase") != "Running":
            assert time.monotonic() < deadline, "the pod never ran"
            time.sleep(0.3)
        assert Node(state_dir).leftovers(), "a running node must be visible to the leftovers check"
    finally:
        started = time.monotonic()
        down = cluster_cli(state_dir, "down")
        print(f"hack/cluster down (a running pod included): {time.monotonic() - started:.1f}s")
    assert down.returncode == 0, down.stderr[-3000:]
    assert Node(state_dir).leftovers() == []
    assert read_sysctls(sysctls_before) == sysctls_before
    assert iptables_chains() == chains_before
    assert not Path(f"/sys/class/net/{BRIDGE}").exists()
    assert cluster_cli(state_dir, "status").stdout.strip() == "down"
    shutil.rmtree(state_dir)  # only once clean: a failure leaves it for inspection
