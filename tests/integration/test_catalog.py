"""The curated catalog on the real cluster: the chart's curated.environments become ClusterEnvironments the
operator applies and builds, `kenv catalog` lists them, the reserved prefix is refused to everyone else by the
API server, and disabling the catalog deletes them."""

from __future__ import annotations

import json
import urllib.error
from typing import Any

import yaml

from kenvfixtures import BUILD_NAMESPACE, GROUP_PATH, kenv_cli, kubectl, wait_for

NAME = "kenv-test-minimal"


def cluster_environment(kube: Any, name: str) -> dict[str, Any] | None:
    try:
        return dict(kube.request("GET", f"{GROUP_PATH}/clusterenvironments/{name}"))
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise


def test_curated_environments_are_applied_listed_reserved_and_pruned(kube, cluster, operator, base_image):
    spec = {"description": "the base image as it is", "docker": {"baseImage": base_image},
            "python": {"userManagedDependencies": True}}
    operator.install(curated={"enabled": True, "environments": [{"name": NAME, "spec": spec}]})
    try:
        ready = wait_for(lambda: (lambda env: env if env and (env.get("status") or {}).get("phase") == "Ready"
                                  else None)(cluster_environment(kube, NAME)), 300, f"{NAME} Ready")
        assert ready["metadata"]["labels"]["kenv.dev/curated"] == BUILD_NAMESPACE
        assert ready["spec"] == spec

        rows = [line.split() for line in kenv_cli(cluster, "catalog").splitlines()]
        row = next(r for r in rows if r[0] == NAME)
        assert row[1:4] == ["Ready", "1", ready["status"]["image"]] and " ".join(row[4:]) == spec["description"]

        # The prefix is the catalog's: a cluster admin cannot create one, nor change a curated spec ...
        mine = {"apiVersion": "kenv.dev/v1alpha1", "kind": "ClusterEnvironment",
                "metadata": {"name": "kenv-mine"}, "spec": {"python": {"userManagedDependencies": True},
                                                            "docker": {"baseImage": base_image}}}
        created = kubectl(cluster, "apply", "-f", "-", stdin=yaml.safe_dump(mine), check=False)
        assert created.returncode != 0 and "reserved for the curated catalog" in created.stderr
        assert "choose a name without that prefix" in created.stderr
        assert cluster_environment(kube, "kenv-mine") is None
        edited = kubectl(cluster, "patch", "cenv", NAME, "--type=merge", "-p",
                         json.dumps({"spec": {"environmentVariables": {"A": "b"}}}), check=False)
        assert edited.returncode != 0 and "change its spec in the catalog" in edited.stderr
        relabelled = kubectl(cluster, "label", "cenv", NAME, "kenv.dev/curated=someone-else", "--overwrite",
                             check=False)
        assert relabelled.returncode != 0 and "leave its kenv.dev/curated label" in relabelled.stderr
        # ... but may annotate it (e.g. kenv.dev/rebuild), and other names stay free.
        kubectl(cluster, "annotate", "cenv", NAME, "team.example/owner=platform")
        free = {**mine, "metadata": {"name": "team-minimal"}}
        kubectl(cluster, "apply", "-f", "-", stdin=yaml.safe_dump(free))
        kubectl(cluster, "delete", "cenv", "team-minimal", "--wait=false")
    finally:
        operator.install(curated={"enabled": False})
    wait_for(lambda: cluster_environment(kube, NAME) is None, 120, f"{NAME} deleted once the catalog is disabled")
