"""Base image tracking: when the base tag moves, a new version is built and the old one stays pinnable."""

from __future__ import annotations

import subprocess

import pytest

from kenvfixtures import create_env, env_versions, events_for, get_env, wait_for, wait_phase

pytestmark = pytest.mark.usefixtures("operator")
BUILDAH = ["buildah", "--storage-driver", "vfs"]


def push_variant(source: str, destination: str, label: str) -> None:
    """Publish `source` plus one label under `destination` (a tag only this test uses)."""
    container = subprocess.run([*BUILDAH, "from", "--tls-verify=false", source], check=True, text=True,
                               capture_output=True).stdout.strip().splitlines()[-1]
    try:
        subprocess.run([*BUILDAH, "config", "--label", f"kenv.variant={label}", container], check=True,
                       capture_output=True)
        subprocess.run([*BUILDAH, "commit", container, destination], check=True, capture_output=True)
        subprocess.run([*BUILDAH, "push", "--tls-verify=false", destination, f"docker://{destination}"],
                       check=True, capture_output=True)
    finally:
        subprocess.run([*BUILDAH, "rm", container], capture_output=True)


def test_moved_base_image_builds_a_new_version(kube, cluster, namespace, base_image):
    tracked = f"{cluster.registry}/kenv/tracked:{namespace}"
    push_variant(base_image, tracked, "one")
    create_env(kube, namespace, "tracked", {
        "docker": {"baseImage": tracked}, "python": {"userManagedDependencies": True},
        "build": {"trackBaseImage": {"enabled": True, "intervalSeconds": 60}}})
    first = wait_phase(kube, namespace, "tracked", {"Ready", "Failed"}, timeout=300)["status"]
    assert first["phase"] == "Ready", first
    recorded = wait_for(lambda: get_env(kube, namespace, "tracked")["status"].get("baseImageDigest"), 30,
                        "the first base image check")
    push_variant(base_image, tracked, "two")
    second = wait_for(lambda: (s := get_env(kube, namespace, "tracked")["status"]).get("version") == 2 and s,
                      150, "the rebuild after the base image moved")
    assert second["baseImageDigest"] != recorded
    assert second["image"] != first["image"]
    versions = {v["spec"]["version"]: v["spec"] for v in env_versions(kube, namespace, "tracked")}
    assert versions[1]["image"] == first["image"] and versions[2]["reason"] == "BaseImageMoved"
    assert any(e["reason"] == "BaseImageMoved" for e in events_for(kube, namespace, "tracked"))
