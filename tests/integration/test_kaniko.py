"""The default builder end to end: the operator's Kaniko Job runs the Kaniko executor image (built here from the
Go module proxy, laid out like the upstream image) in a real pod, pulls the base image from the local registry,
pip-installs through the network and pushes; the digest it writes to /dev/termination-log becomes the
Environment's status."""

from __future__ import annotations

import time
import uuid

import pytest

from kenv.buildwatch import ANNOTATION
from kenvfixtures import (
    added_paths,
    build_jobs,
    build_pod,
    create_env,
    get_env,
    registry_digest,
    wait_for,
    wait_phase,
)

pytestmark = pytest.mark.usefixtures("operator")


def test_kaniko_builds_pip_environment_to_ready(kube, cluster, namespace, base_image, ca_config_map):
    spec = {"docker": {"baseImage": base_image}, "pip": {"requirements": "six==1.16.0\n"},
            "build": {"caBundle": ca_config_map}}
    # The same content may already be in the registry (another test builds it): force a build.
    token = f"kaniko-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    create_env(kube, namespace, "kaniko", spec, annotations={"kenv.dev/rebuild": token})
    env = wait_phase(kube, namespace, "kaniko", {"Ready", "Failed"}, timeout=900)
    print(f"kaniko build to Ready in {time.monotonic() - t0:.1f}s")
    status = env["status"]
    job = next(j for j in build_jobs(kube, status.get("hash"))
               if j["metadata"]["annotations"]["kenv.dev/requested-by"].endswith(f"{namespace}/kaniko"))
    pod, log = build_pod(kube, status)
    assert status["phase"] == "Ready", (status, log[-3000:])

    tag = "kenv-" + status["hash"][:40]
    assert registry_digest(cluster.registry, "kenv/environments", tag) == status["digest"]
    assert status["image"] == f"{cluster.registry}/kenv/environments@{status['digest']}"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"] == status["digest"]
    # the build Job's end was seen by the operator's watch, which nudged this Environment (buildwatch.py); with
    # the tests' 1 s poll the poll may have made it Ready first, so the nudge may land just after
    wait_for(lambda: (get_env(kube, namespace, "kaniko")["metadata"].get("annotations") or {}).get(ANNOTATION)
             == job["metadata"]["uid"], 30, "the build watch's nudge")

    container = job["spec"]["template"]["spec"]["containers"][0]
    assert "kaniko-executor" in container["image"] and container["image"] == pod["spec"]["containers"][0]["image"]
    for kaniko_says in ("Retrieving image manifest", "Taking snapshot", "Pushing image to"):
        assert kaniko_says in log, log[-3000:]
    assert "Successfully installed six-1.16.0" in log

    # The layers Kaniko added hold the build's files and nothing of the build pod: its volumes (the package cache
    # too), /kaniko, and the kubelet's /etc and /dev mounts are mount points, which Kaniko leaves out.
    added = added_paths(cluster.registry, base_image, status["digest"])
    assert {"etc/kenv/ca.crt", "tmp/kenv/requirements.txt"} <= added
    assert any(p.endswith("-packages/six.py") for p in added), sorted(added)[:50]
    leaked = {p for p in added if p.split("/")[0] in ("workspace", "kaniko", "kenv", "dev", "proc")
              or p in ("etc/resolv.conf", "etc/hosts", "etc/hostname")}
    assert not leaked, sorted(leaked)


def test_failing_kaniko_build_reports_its_exit_code_and_log(kube, namespace, base_image, ca_config_map):
    create_env(kube, namespace, "broken", {"docker": {"baseImage": base_image}, "build": {"caBundle": ca_config_map},
                                           "pip": {"requirements": "kenv-package-that-does-not-exist-xyz==0.0.1\n"}})
    env = wait_phase(kube, namespace, "broken", {"Ready", "Failed"}, timeout=900)
    assert env["status"]["phase"] == "Failed", env["status"]
    built = next(c for c in env["status"]["conditions"] if c["type"] == "Built")
    assert built["reason"] == "BuildFailed" and "exited with code 1" in built["message"], built
    assert "kenv-package-that-does-not-exist-xyz" in built["message"]
    assert "error building image" in built["message"]  # Kaniko's own last words, read from the pod's log
