"""`make image` builds the operator image with buildah (no Docker engine) on the local Debian/python3 base, and the
image runs as a non-root pod on the real node."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import images
from kenv.crd import CRD_KINDS
from kenvfixtures import exit_code, run_pod

ROOT = Path(__file__).resolve().parents[2]
BUILDAH = ["buildah", "--storage-driver", "vfs"]


def test_make_image_builds_a_runnable_non_root_operator_image(kube, cluster, namespace):
    result = subprocess.run(["make", "-s", "--no-print-directory", "-C", str(ROOT), "image"], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    local = result.stdout.strip().splitlines()[-1]
    assert local.startswith("localhost/kenv/operator:")
    config = json.loads(subprocess.run([*BUILDAH, "inspect", "--type", "image", "kenv-operator:dev"],
                                       check=True, capture_output=True, text=True).stdout)["OCIv1"]["config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["kenv"] and config["Cmd"] == ["operator"]

    pushed = images.push(local, cluster.registry)
    pod, log = run_pod(kube, namespace, "crd", {
        "securityContext": {"runAsNonRoot": True},
        "containers": [{"name": "operator", "image": pushed, "args": ["crd"],
                        "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                            "capabilities": {"drop": ["ALL"]}}}]})
    assert exit_code(pod) == 0, log
    assert log.count("kind: CustomResourceDefinition") == len(CRD_KINDS)  # the installed package runs inside
