"""watchcache: the KubeRay APIServer as a caching, watch-backed read proxy."""

from watchcache.config import RAY_RESOURCES, ResourceSpec, Settings
from watchcache.server import Server

__all__ = ["RAY_RESOURCES", "ResourceSpec", "Server", "Settings"]
__version__ = "0.1.0"
