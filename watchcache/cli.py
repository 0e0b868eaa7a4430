"""``watchcache serve`` (a real cluster) and ``watchcache dev`` (a local control plane)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.util
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from watchcache.config import (
    AUTHENTICATION_MODES,
    AUTHORIZATION_MODES,
    FEATURES,
    SecuritySettings,
    ServerLimits,
    Settings,
)
from watchcache.upstream.retry import RetryPolicy

DEV_PORT = 31888  # the port the KubeRay APIServer docs use


# Flag defaults are the Settings defaults: one place for each number.
DEFAULTS = Settings()


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bind", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="forward every request to the API server, as the reference APIServer does",
    )
    parser.add_argument(
        "--namespace",
        action="append",
        default=[],
        help="cache only this namespace (repeatable); default: all namespaces",
    )
    parser.add_argument(
        "--cors-allow-origin", default=None, help="value of Access-Control-Allow-Origin"
    )
    parser.add_argument(
        "--defaults",
        default=None,
        metavar="FILE",
        help="YAML file of default values for created Ray resources",
    )
    parser.add_argument(
        "--no-kuberay-features",
        action="store_true",
        help="turn off compute templates, Ray events and the dashboard service proxy",
    )
    parser.add_argument(
        "--features",
        default=None,
        metavar="LIST",
        help="the built-in features to run, comma-separated, of cors, ray-events,"
        " service-proxy, defaults, compute-templates (default: all; '' for none)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=3,
        help="retries of a transient upstream failure (408, 429, 5xx, no answer); 0 disables",
    )
    parser.add_argument(
        "--upstream-timeout",
        type=float,
        default=DEFAULTS.upstream_timeout,
        metavar="SECONDS",
        help="how long the API server may take to start answering a request",
    )
    parser.add_argument(
        "--render-cache-bytes",
        type=int,
        default=DEFAULTS.render_cache_bytes,
        metavar="BYTES",
        help="rendered list bodies kept for reuse, gzip forms included, all resources together",
    )
    parser.add_argument(
        "--watch-stall-timeout",
        type=float,
        default=DEFAULTS.watch_stall_timeout,
        metavar="SECONDS",
        help="a watch client that has not read what was sent to it for this long is cut off",
    )
    parser.add_argument(
        "--watch-history-seconds",
        type=float,
        default=DEFAULTS.watch_history_seconds,
        metavar="SECONDS",
        help="how long recent events are kept for watches to resume from",
    )
    parser.add_argument(
        "--watch-history-events",
        type=int,
        default=DEFAULTS.watch_history_events,
        metavar="N",
        help="how many recent events per resource are kept for watches to resume from",
    )
    parser.add_argument(
        "--upstream-watch-silence",
        type=float,
        default=DEFAULTS.upstream_watch_silence,
        metavar="SECONDS",
        help="restart an upstream watch that sent nothing (not even a bookmark) this long",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    _security(parser)
    _limits(parser)


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


def _security(parser: argparse.ArgumentParser) -> None:
    """Who may ask what (README, "Security"); defaults from SecuritySettings."""
    d = SecuritySettings()
    group = parser.add_argument_group("security")
    group.add_argument(
        "--authentication",
        action="append",
        default=[],
        choices=AUTHENTICATION_MODES,
        help="how a caller is authenticated, repeatable, tried in order: kubernetes (bearer"
        " tokens checked with a TokenReview), token-file (--token-auth-file), x509"
        " (--client-ca-file, over TLS), none (everyone anonymous; the default)",
    )
    group.add_argument(
        "--token-auth-file",
        default=None,
        metavar="FILE",
        help="static tokens, one 'token,user,uid,\"group1,group2\"' line each (kube-apiserver's"
        " format), re-read when the file changes",
    )
    group.add_argument(
        "--client-ca-file", default=None, metavar="FILE", help="CA of x509 client certificates"
    )
    group.add_argument(
        "--authentication-audiences",
        default="",
        metavar="LIST",
        help="audiences a token must be for (comma-separated; TokenReview)",
    )
    group.add_argument(
        "--authentication-ttl",
        type=float,
        default=d.authentication_ttl,
        metavar="SECONDS",
        help="how long a TokenReview answer is kept (by a hash of the token)",
    )
    group.add_argument(
        "--anonymous-auth",
        type=_bool,
        default=d.anonymous,
        metavar="BOOL",
        help="a request with no credential is system:anonymous (true) or 401 (false)",
    )
    group.add_argument(
        "--authorization",
        default=None,
        choices=AUTHORIZATION_MODES,
        help="kubernetes: a SubjectAccessReview per user and request attributes, cached;"
        " none: everything allowed (default: kubernetes when authenticating, else none)",
    )
    group.add_argument(
        "--authorization-allow-ttl",
        type=float,
        default=d.allow_ttl,
        metavar="SECONDS",
        help="how long an allowed decision is kept",
    )
    group.add_argument(
        "--authorization-deny-ttl",
        type=float,
        default=d.deny_ttl,
        metavar="SECONDS",
        help="how long a denied decision is kept",
    )
    group.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="serve a non-loopback address with no authentication (refused otherwise)",
    )
    group.add_argument("--tls-cert-file", default=None, metavar="FILE", help="serve HTTPS")
    group.add_argument("--tls-private-key-file", default=None, metavar="FILE")
    group.add_argument(
        "--audit-log",
        default=None,
        metavar="PATH",
        help="one JSON line per request ('-': standard output); never a token or a body",
    )


def security_from(args: argparse.Namespace) -> SecuritySettings:
    audiences = tuple(a.strip() for a in args.authentication_audiences.split(",") if a.strip())
    return SecuritySettings(
        authentication=tuple(args.authentication),
        token_auth_file=args.token_auth_file,
        client_ca_file=args.client_ca_file,
        audiences=audiences,
        authentication_ttl=max(args.authentication_ttl, 0.0),
        anonymous=args.anonymous_auth,
        authorization=args.authorization,
        allow_ttl=max(args.authorization_allow_ttl, 0.0),
        deny_ttl=max(args.authorization_deny_ttl, 0.0),
        allow_unauthenticated=args.allow_unauthenticated,
        tls_cert_file=args.tls_cert_file,
        tls_private_key_file=args.tls_private_key_file,
        audit_log=args.audit_log,
    )


def _limits(parser: argparse.ArgumentParser) -> None:
    """The server's bounds; defaults from ServerLimits, listed in the README's "Limits"."""
    d = ServerLimits()
    group = parser.add_argument_group("limits")
    group.add_argument(
        "--max-connections",
        type=int,
        default=d.max_connections,
        metavar="N",
        help="open client connections (lowered to fit the descriptor limit); when full, the "
        "connection waiting longest for its headers is closed, else the newcomer gets 429",
    )
    group.add_argument(
        "--max-upstream-connections",
        type=int,
        default=d.max_upstream_connections,
        metavar="N",
        help="connections to kube-apiserver for forwarded requests (cached reads and watches "
        "use none), so that clients get the descriptors left after them; all busy for "
        f"{d.upstream_connection_wait:g}s: 429",
    )
    group.add_argument(
        "--header-timeout",
        type=float,
        default=d.header_timeout,
        metavar="SECONDS",
        help="time a new connection has to send its request headers",
    )
    group.add_argument(
        "--idle-timeout",
        type=float,
        default=d.idle_timeout,
        metavar="SECONDS",
        help="time a kept-alive connection has to send its next request's headers",
    )
    group.add_argument(
        "--body-timeout",
        type=float,
        default=d.body_timeout,
        metavar="SECONDS",
        help="time to receive a request body",
    )
    group.add_argument(
        "--max-header-bytes",
        type=int,
        default=d.max_header_bytes,
        metavar="BYTES",
        help="request line and headers together; larger is answered 431",
    )
    group.add_argument(
        "--max-query-params",
        type=int,
        default=d.max_query_params,
        metavar="N",
        help="query parameters of one request; more is answered 400",
    )
    group.add_argument(
        "--shutdown-delay",
        type=float,
        default=d.shutdown_delay,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, how long /readyz fails while everything is still served (for"
        " load balancers to notice) before the port closes; kube-apiserver's"
        " --shutdown-delay-duration",
    )
    group.add_argument(
        "--shutdown-grace",
        type=float,
        default=d.shutdown_grace,
        metavar="SECONDS",
        help="after the shutdown delay, once the port is closed: how long watches and"
        " requests in flight may take to finish",
    )


def limits_from(args: argparse.Namespace) -> ServerLimits:
    return ServerLimits(
        max_connections=max(args.max_connections, 1),
        max_upstream_connections=max(args.max_upstream_connections, 1),
        header_timeout=args.header_timeout,
        idle_timeout=args.idle_timeout,
        body_timeout=args.body_timeout,
        max_header_bytes=args.max_header_bytes,
        max_query_params=args.max_query_params,
        shutdown_delay=max(args.shutdown_delay, 0.0),
        shutdown_grace=max(args.shutdown_grace, 0.0),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="watchcache", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve against a Kubernetes cluster")
    serve.add_argument(
        "--kubeconfig",
        default=None,
        help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)",
    )
    serve.add_argument("--context", default=None, help="kubeconfig context")
    serve.add_argument(
        "--port", type=int, default=8888, help="port to listen on (0 picks a free one)"
    )
    serve.add_argument(
        "--workers",
        default="1",
        metavar="N|auto",
        help="worker processes sharing the port, each with its own cache and watches (auto:"
        " the CPUs this process may use, cgroup quota included); see README, Workers",
    )
    # Set by the supervisor for the workers it starts (watchcache.workers); not for users.
    serve.add_argument("--worker-of", default=None, help=argparse.SUPPRESS)
    serve.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    serve.add_argument("--worker-count", type=int, default=1, help=argparse.SUPPRESS)
    serve.add_argument("--listen-fd", default="", help=argparse.SUPPRESS)
    _common(serve)

    dev = sub.add_parser(
        "dev", help="build and start a local control plane with the KubeRay CRDs, and serve it"
    )
    dev.add_argument("--port", type=int, default=DEV_PORT, help="port to listen on")
    dev.add_argument(
        "--tls",
        action="store_true",
        help="serve HTTPS with a local CA and certificate (made once, kept in ~/.cache)",
    )
    _common(dev)
    return parser


def _features(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = sorted(set(names) - set(FEATURES))
    if unknown:
        sys.exit(f"unknown features: {', '.join(unknown)} (known: {', '.join(FEATURES)})")
    return names


def settings_from(args: argparse.Namespace, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "bind": args.bind,
        "port": args.port,
        "cache": not args.no_cache,
        "namespaces": tuple(args.namespace),
        "cors_allow_origin": args.cors_allow_origin,
        "defaults_file": args.defaults,
        "kuberay_features": not args.no_kuberay_features,
        "features": _features(args.features),
        "retry": RetryPolicy(max_retries=max(args.retries, 0)),
        "upstream_timeout": args.upstream_timeout,
        "render_cache_bytes": args.render_cache_bytes,
        "watch_stall_timeout": args.watch_stall_timeout,
        "watch_history_seconds": args.watch_history_seconds,
        "watch_history_events": args.watch_history_events,
        "upstream_watch_silence": max(args.upstream_watch_silence, 0.1),
        "kubeconfig": getattr(args, "kubeconfig", None),
        "context": getattr(args, "context", None),
        "limits": limits_from(args),
        "security": security_from(args),
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # A worker's lines say which worker wrote them: they share the supervisor's stderr.
    worker = getattr(args, "worker_of", None) is not None
    who = f"worker {args.worker_index} " if worker else ""
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s %(levelname)s {who}%(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "serve":
        serve(args, list(sys.argv[1:] if argv is None else argv))
    else:
        dev(args)


def serve(args: argparse.Namespace, argv: list[str]) -> None:
    """One server; or, with --workers above 1, the supervisor of that many; or one worker."""
    from watchcache import workers
    from watchcache.server import Server

    if args.worker_of is not None:
        import socket

        fds = [int(fd) for fd in args.listen_fd.split(",") if fd]
        sockets = [socket.socket(fileno=fd) for fd in fds]
        context = workers.WorkerContext(Path(args.worker_of), args.worker_index, args.worker_count)
        run(Server(settings_from(args), sockets=sockets, worker=context))
        return
    try:
        count = workers.workers_count(args.workers)
    except ValueError as exc:
        sys.exit(f"watchcache: {exc}")
    if count == 1:
        run(Server(settings_from(args)))
        return
    settings = settings_from(args)
    try:
        from watchcache.server import check_exposure

        check_exposure(settings)
        if "serve" in argv:
            argv.remove("serve")
        limits = settings.limits
        code = workers.supervise(
            argv, count, settings.bind, settings.port, limits.shutdown_delay + limits.shutdown_grace
        )
    except (ValueError, OSError) as exc:
        sys.exit(f"watchcache: {exc}")
    sys.exit(code)


def run(server: Any) -> None:
    """Serves until a signal; a setting that cannot be served is one line and exit 2."""
    try:
        asyncio.run(server.serve_forever())
    except (ValueError, OSError) as exc:  # a refused setting, a certificate, a token file
        sys.exit(f"watchcache: {exc}")


DEV_TOOLS = Path(__file__).resolve().parents[1] / "deploy" / "controlplane"
LAUNCHER = DEV_TOOLS / "launcher.py"


def load_dev_tool(name: str) -> Any:
    """A dev tool of the checkout this package runs from (deploy/controlplane/NAME.py: the
    control-plane launcher, the dev certificates), loaded once; not in the wheel, so
    FileNotFoundError outside a checkout. The tests and benchmarks load them through this."""
    module_name = f"watchcache_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    path = DEV_TOOLS / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(path)
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up while made
    spec.loader.exec_module(module)
    return module


def load_launcher() -> Any:
    return load_dev_tool("launcher")


def _dev_tool(name: str) -> Any:
    try:
        return load_dev_tool(name)
    except FileNotFoundError:
        sys.exit(
            "watchcache dev needs a checkout of the watchcache repository (it builds a local"
            f" control plane with {LAUNCHER.parent}/build.sh); against a cluster, use"
            " `watchcache serve --kubeconfig FILE`"
        )


def dev(args: argparse.Namespace) -> None:
    from watchcache.server import Server

    launcher = _dev_tool("launcher")
    ControlPlane, log = launcher.ControlPlane, launcher.log
    log("starting etcd and kube-apiserver (building them first if needed)")
    with ControlPlane() as cp:
        overrides: dict[str, object] = {"kubeconfig": str(cp.kubeconfig)}
        scheme, trust, ca_file = "http", "", None
        if args.tls:
            certs = _dev_tool("devcerts").ensure(Path.home() / ".cache" / "watchcache" / "dev-tls")
            security = dataclasses.replace(
                security_from(args),
                tls_cert_file=str(certs.cert_file),
                tls_private_key_file=str(certs.key_file),
            )
            overrides["security"] = security
            scheme, ca_file = "https", certs.ca_file
        base = f"{scheme}://{args.bind}:{args.port}"
        if args.tls:
            trust = "\n" + certs.how_to_trust(base) + "\n"
        settings = settings_from(args, **overrides)
        proxy_kubeconfig = cp.workdir / "watchcache.kubeconfig"
        cp.write_kubeconfig(proxy_kubeconfig, cp.admin, server=base, ca_file=ca_file)
        sample = cp.samples_dir / "ray-cluster.sample.yaml"
        users = "\n".join(
            f"  {name:<40} {may}\n    token: {token}" for name, token, may in cp.example_user_rows()
        )
        curl = "curl -s" + (f" --cacert {ca_file}" if ca_file else "")
        print(
            f"""
watchcache is serving {base}  (Ctrl-C stops everything)
{trust}
  kube-apiserver kubeconfig:  {cp.kubeconfig}
  kubeconfig for watchcache:  {proxy_kubeconfig}
  kubectl:                    {cp.kubectl}

Example users of this control plane (try them with --authentication kubernetes,
as -H 'Authorization: Bearer TOKEN'):
{users}

Try:
  {curl} -X POST -H 'Content-Type: application/yaml' --data-binary @{sample} \\
       {base}/apis/ray.io/v1/namespaces/default/rayclusters
  {curl} {base}/apis/ray.io/v1/namespaces/default/rayclusters/raycluster-kuberay
  {curl} '{base}/apis/ray.io/v1/rayclusters?labelSelector=ray.io/cluster'
  {curl} -N '{base}/apis/ray.io/v1/namespaces/default/rayclusters?watch=true'
  {curl} -X DELETE {base}/apis/ray.io/v1/namespaces/default/rayclusters/raycluster-kuberay
""",
            flush=True,
        )
        run(Server(settings))


if __name__ == "__main__":
    main()
