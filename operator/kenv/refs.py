"""Which environment an operation is about: an Environment (namespaced) or a ClusterEnvironment."""

from __future__ import annotations

from dataclasses import dataclass

from kenv.models import CLUSTER_ENVIRONMENT_LABEL, ENVIRONMENT_LABEL


@dataclass(frozen=True)
class EnvironmentRef:
    kind: str  # Environment | ClusterEnvironment
    namespace: str | None
    name: str

    @property
    def plural(self) -> str:
        return "environments" if self.kind == "Environment" else "clusterenvironments"

    @property
    def pod_label(self) -> str:
        """The label pods opt in with (kenv.dev/environment or kenv.dev/cluster-environment)."""
        return ENVIRONMENT_LABEL if self.kind == "Environment" else CLUSTER_ENVIRONMENT_LABEL

    def pod_namespaces(self, watched: list[str]) -> list[str | None]:
        """Where this environment's pods may be: its own namespace; a ClusterEnvironment's anywhere, which with
        namespaced RBAC means the watched namespaces only (None: all)."""
        return [self.namespace] if self.namespace else list(watched) or [None]

    @property
    def display(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else f"cluster/{self.name}"

    def references_namespace(self, build_namespace: str) -> str:
        """Where ConfigMaps and Secrets named by the spec live: the Environment's namespace, or for a curated
        ClusterEnvironment the operator's build namespace (readable by the platform team only)."""
        return self.namespace or build_namespace
