"""Which environment an operation is about: an Environment (namespaced) or a ClusterEnvironment."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EnvironmentRef:
    kind: str  # Environment | ClusterEnvironment
    namespace: str | None
    name: str

    @property
    def plural(self) -> str:
        return "environments" if self.kind == "Environment" else "clusterenvironments"

    @property
    def display(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else f"cluster/{self.name}"

    def references_namespace(self, build_namespace: str) -> str:
        """Where ConfigMaps and Secrets named by the spec live: the Environment's namespace, or for a curated
        ClusterEnvironment the operator's build namespace (readable by the platform team only)."""
        return self.namespace or build_namespace
