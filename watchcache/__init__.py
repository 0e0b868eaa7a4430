"""watchcache: the KubeRay APIServer as a caching, watch-backed read proxy."""

from watchcache.app import Server
from watchcache.config import RAY_RESOURCES, ResourceSpec, Settings

__all__ = ["RAY_RESOURCES", "ResourceSpec", "Server", "Settings"]
__version__ = "0.1.0"
