"""A real Kaniko build pod is confined as README "Hardening" and the chart promise (issue 15): the build's own RUN
step records what the kernel says of its process (uid, no_new_privs, seccomp mode, capability bounding set), and a
pod started from the built image prints it back; the Job carries the chart's default build resources."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml

from kenv.builds import KANIKO_SECURITY_CONTEXT
from kenvfixtures import build_jobs, create_env, run_pod, wait_phase

pytestmark = pytest.mark.usefixtures("operator")
CHART_VALUES = Path(__file__).resolve().parents[2] / "charts/kenv/values.yaml"
# linux/capability.h
CAPABILITY_BITS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4, "KILL": 5,
                   "SETGID": 6, "SETUID": 7, "SETPCAP": 8, "NET_BIND_SERVICE": 10, "NET_RAW": 13, "SYS_CHROOT": 18,
                   "SYS_ADMIN": 21, "MKNOD": 27, "AUDIT_WRITE": 29, "SETFCAP": 31}


def kernel_view(text: str) -> dict[str, str]:
    """Lines of /proc/<pid>/status as {field: value}."""
    return {key: value.strip() for key, _, value in (line.partition(":") for line in text.splitlines()) if value}


def test_a_kaniko_build_runs_as_root_without_privilege_escalation_under_runtime_default_seccomp(
        kube, namespace, base_image):
    marker = uuid.uuid4().hex[:8]
    dockerfile = (f"FROM {base_image}\nRUN grep -E '^(Uid|NoNewPrivs|Seccomp|CapBnd):' /proc/self/status "
                  f"> /kenv-build-status && echo {marker} >> /kenv-build-status")
    create_env(kube, namespace, "confined", {"docker": {"dockerfile": dockerfile},
                                             "python": {"userManagedDependencies": True}})
    env = wait_phase(kube, namespace, "confined", {"Ready", "Failed"}, timeout=600)
    assert env["status"]["phase"] == "Ready", env["status"]
    pod, log = run_pod(kube, namespace, f"show-{marker}", {"containers": [
        {"name": "show", "image": env["status"]["image"], "command": ["cat", "/kenv-build-status"]}]})
    assert pod["status"]["phase"] == "Succeeded", log
    assert marker in log  # the file this build wrote, not one of an earlier image
    seen = kernel_view(log)
    assert seen["Uid"].split() == ["0", "0", "0", "0"]  # root in its container: Kaniko cannot run otherwise
    assert seen["NoNewPrivs"] == "1"  # allowPrivilegeEscalation: false
    assert seen["Seccomp"] == "2"  # a filter: the runtime's default profile
    expected = sum(1 << CAPABILITY_BITS[name] for name in KANIKO_SECURITY_CONTEXT["capabilities"]["add"])
    assert int(seen["CapBnd"], 16) == expected, f"{int(seen['CapBnd'], 16):#x} != {expected:#x}"
    assert not int(seen["CapBnd"], 16) & (1 << CAPABILITY_BITS["NET_RAW"] | 1 << CAPABILITY_BITS["SYS_ADMIN"])

    job = next(j for j in build_jobs(kube, env["status"]["hash"])
               if j["metadata"]["annotations"]["kenv.dev/requested-by"].endswith(f"{namespace}/confined"))
    template = job["spec"]["template"]["spec"]
    assert template["automountServiceAccountToken"] is False
    assert template["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    chart_defaults = yaml.safe_load(CHART_VALUES.read_text())["buildResources"]
    assert template["containers"][0]["resources"] == {
        section: {name: str(value) for name, value in quantities.items()}
        for section, quantities in chart_defaults.items()}
