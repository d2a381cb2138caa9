"""Azure ML's build_local: `kenv build --push` on the user's machine publishes the same content tag the cluster
looks up, so the cluster finds the image and builds nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from kenvfixtures import CA_BUNDLE, build_jobs, create_env, wait_phase

pytestmark = pytest.mark.usefixtures("operator")


def test_local_build_is_found_by_the_cluster(kube, cluster, namespace, base_image, tmp_path):
    spec = {"docker": {"dockerfile": f"FROM {base_image}\nLABEL kenv.local={namespace}"},
            "python": {"userManagedDependencies": True}}
    manifest = tmp_path / "env.yaml"
    manifest.write_text(yaml.safe_dump({"apiVersion": "kenv.dev/v1alpha1", "kind": "Environment",
                                        "metadata": {"name": "local"}, "spec": spec}))
    result = subprocess.run([sys.executable, "-m", "kenv.cli", "build", "-f", str(manifest), "--push", "--insecure",
                             "--destination-repo", f"{cluster.registry}/kenv/environments",
                             "--ca-bundle", str(CA_BUNDLE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    pushed = result.stdout.strip().splitlines()[-1]
    assert pushed.startswith(f"{cluster.registry}/kenv/environments@sha256:")

    create_env(kube, namespace, "local", spec)
    env = wait_phase(kube, namespace, "local", {"Ready", "Failed"}, timeout=60)
    assert env["status"]["image"] == pushed
    assert next(c for c in env["status"]["conditions"] if c["type"] == "Ready")["reason"] == "ImageFound"
    assert build_jobs(kube, env["status"]["hash"]) == []
