"""What names a Kubernetes resource that watchcache serves: adding one is configuration."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True, slots=True)
class ResourceSpec:
    """A Kubernetes resource that watchcache serves; adding one to the cache is configuration."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    # Upstream selectors: the cache holds only matching objects, and no client can see more.
    label_selector: str = ""
    field_selector: str = ""
    # False: cached for watchcache's own use (compute templates, KubeRay services), not served.
    served: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def api_prefix(self) -> str:
        """The path prefix of the resource's group version: /apis/ray.io/v1 or /api/v1."""
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    def collection_path(self, namespace: str | None = None) -> str:
        if namespace is None or not self.namespaced:
            return f"{self.api_prefix}/{self.plural}"
        return f"{self.api_prefix}/namespaces/{namespace}/{self.plural}"


RAY_RESOURCES: tuple[ResourceSpec, ...] = (
    ResourceSpec(group="ray.io", version="v1", plural="rayclusters", kind="RayCluster"),
    ResourceSpec(group="ray.io", version="v1", plural="rayjobs", kind="RayJob"),
    ResourceSpec(group="ray.io", version="v1", plural="rayservices", kind="RayService"),
)
