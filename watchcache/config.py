"""One settings object for the whole server, filled from flags (cli.py) or by library users."""

from __future__ import annotations

from dataclasses import dataclass, field

from watchcache.kube.resources import RAY_RESOURCES, ResourceSpec
from watchcache.upstream.retry import RetryPolicy

# The built-in features by name, in the order the chain runs them (outermost first):
# defaults before compute templates, since a defaults file may name a computeTemplate.
FEATURES = ("cors", "ray-events", "service-proxy", "defaults", "compute-templates")
KUBERAY_FEATURES = ("ray-events", "service-proxy", "compute-templates")

__all__ = ["RAY_RESOURCES", "ResourceSpec", "SecuritySettings", "ServerLimits", "Settings"]

# Authentication modes, tried in the order given.
AUTHENTICATION_MODES = ("kubernetes", "token-file", "x509", "none")
AUTHORIZATION_MODES = ("kubernetes", "none")


@dataclass(frozen=True, kw_only=True, slots=True)
class SecuritySettings:
    """Who may ask what (README, "Security"): authentication, authorization, TLS, audit."""

    # Tried in order: TokenReview against the API server, a static token file, client
    # certificates; "none" (or nothing) is anonymous for everyone.
    authentication: tuple[str, ...] = ()
    token_auth_file: str | None = None
    client_ca_file: str | None = None
    audiences: tuple[str, ...] = ()
    # How long a TokenReview answer is kept (by a hash of the token, never the token).
    authentication_ttl: float = 120.0
    # A request with no credential is system:anonymous (else 401), as kube-apiserver's.
    anonymous: bool = True
    # "kubernetes": a SubjectAccessReview per (user, attributes), cached; None: kubernetes
    # when an authentication mode is on, else none.
    authorization: str | None = None
    allow_ttl: float = 300.0
    deny_ttl: float = 30.0
    # Serve on a non-loopback address with no authentication: only when asked for.
    allow_unauthenticated: bool = False
    tls_cert_file: str | None = None
    tls_private_key_file: str | None = None
    # One JSON line per request; "-" for standard output.
    audit_log: str | None = None

    @property
    def authenticating(self) -> bool:
        return any(mode != "none" for mode in self.authentication)

    @property
    def authorization_mode(self) -> str:
        if self.authorization is not None:
            return self.authorization
        return "kubernetes" if self.authenticating else "none"

    @property
    def enabled(self) -> bool:
        """Whether requests go through the security middleware at all."""
        return self.authenticating or self.authorization_mode != "none" or bool(self.audit_log)

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert_file)


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerLimits:
    """The HTTP server's bounds (README, "Limits"): what one client, or many, may hold."""

    # Open client connections; lowered at start to fit the descriptor limit (serving.py).
    max_connections: int = 2048
    # Open connections to kube-apiserver for forwarded requests (upstream/client.py:
    # MAX_CONNECTIONS); a request finding all busy waits upstream_connection_wait, then 429.
    max_upstream_connections: int = 1024
    upstream_connection_wait: float = 5.0
    # A new connection's time to send its request headers (kube-apiserver: 32 s).
    header_timeout: float = 32.0
    # A kept-alive connection's time to send its next request's headers (kube-apiserver: 90 s).
    idle_timeout: float = 90.0
    # Time to receive a request body once its headers are in.
    body_timeout: float = 60.0
    # The request line and headers together (kube-apiserver: 1 MiB); beyond, 431.
    max_header_bytes: int = 64 * 1024
    # Query parameters of one request (Go's own bound); beyond, 400.
    max_query_params: int = 10_000
    # On SIGTERM/SIGINT: how long /readyz fails while everything is still served, so that
    # load balancers stop sending traffic before the port closes (kube-apiserver's
    # --shutdown-delay-duration). 0 in development and tests; the Helm chart sets it.
    shutdown_delay: float = 0.0
    # Then, once accepting has stopped: how long requests in flight may take to finish.
    shutdown_grace: float = 20.0


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything that shapes one server. Defaults are the ones `watchcache serve` uses."""

    bind: str = "127.0.0.1"
    port: int = 8888
    kubeconfig: str | None = None
    context: str | None = None
    # Serve reads from the cache (the point of watchcache); False forwards every request,
    # as the reference APIServer does.
    cache: bool = True
    # Namespaces to cache; empty means all (needs cluster-wide list/watch permission).
    namespaces: tuple[str, ...] = ()
    resources: tuple[ResourceSpec, ...] = RAY_RESOURCES
    # How long an upstream request may take before it is abandoned (watches excepted).
    upstream_timeout: float = 60.0
    # Rendered list bodies (and their gzip forms) kept for reuse, all resources together.
    render_cache_bytes: int = 128 << 20
    # A watch whose client has not taken what was written to it for this long is ended.
    watch_stall_timeout: float = 30.0
    # How far back a watch can resume: the window of recent events kept per resource.
    watch_history_seconds: float = 300.0
    watch_history_events: int = 10_000
    # An upstream watch silent this long (no event, no bookmark) is presumed stalled and
    # restarted; kube-apiserver sends a bookmark about every minute.
    upstream_watch_silence: float = 130.0
    cors_allow_origin: str | None = None
    # A YAML file of default values for created Ray resources (see middleware.kuberay.Defaults).
    defaults_file: str | None = None
    # The KubeRay features: compute templates, Ray events, the dashboard service proxy.
    kuberay_features: bool = True
    # The built-in features to run, by name (middleware.features.NAMES); None: all that
    # the other settings turn on.
    features: tuple[str, ...] | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    limits: ServerLimits = field(default_factory=ServerLimits)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    extra: dict[str, object] = field(default_factory=dict)

    def feature_names(self) -> tuple[str, ...]:
        """The built-in features this server runs, by name."""
        if self.features is not None:
            return self.features
        if not self.kuberay_features:
            return tuple(n for n in FEATURES if n not in KUBERAY_FEATURES)
        return FEATURES
