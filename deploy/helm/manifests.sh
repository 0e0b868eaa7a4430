#!/usr/bin/env bash
# Regenerates the plain manifests of deploy/kubernetes/ from the chart, so that they never
# drift from it (tests/integration/test_helm.py checks that they match):
#   watchcache.yaml     the chart's default (secure) rendering, release "watchcache" in
#                       ray-system: authentication kubernetes, authorization kubernetes and
#                       their RBAC included
#   security-rbac.yaml  the RBAC of those security modes on its own (TokenReview,
#                       SubjectAccessReview, impersonation, and the /metrics reader role), for
#                       whoever runs watchcache another way
# Helm's own bookkeeping labels are left out: these files are applied with kubectl.
#
#   deploy/helm/manifests.sh        (builds helm first if needed, through deploy/helm/build.sh)
#   deploy/helm/manifests.sh DIR    writes into DIR instead (the test compares the two)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
helm="$(bash "$here/build.sh")"
chart="$here/watchcache"
out="${1:-$here/../kubernetes}"
mkdir -p "$out"

plain() { grep -v -e '^ *helm\.sh/chart:' -e '^ *app\.kubernetes\.io/managed-by:'; }

{
  cat <<'HEAD'
# watchcache in a cluster, in namespace ray-system: a service account allowed what the
# server does (read and watch the cached resources, write Ray resources and compute-template
# ConfigMaps, use the KubeRay services' proxy) and what its security needs (TokenReviews,
# SubjectAccessReviews, impersonating the callers it authenticated), a Deployment serving
# with `--authentication=kubernetes --authorization=kubernetes` (callers send a bearer token;
# the cluster's RBAC for them applies), a Service on the KubeRay APIServer's port, a
# PodDisruptionBudget, and a ClusterRole allowing `get` on /metrics for whoever scrapes it
# (bind it yourself). The security rules alone, with why each exists: security-rbac.yaml.
#
# GENERATED from the Helm chart deploy/helm/watchcache with its default values by
# deploy/helm/manifests.sh; edit the chart and run that script, not this file.
HEAD
  "$helm" template watchcache "$chart" --namespace ray-system | plain
} >"$out/watchcache.yaml"

{
  cat <<'HEAD'
# The RBAC that watchcache's security modes need, and why each rule is there; watchcache.yaml
# already holds it (its defaults are these modes). Here on its own for whoever runs watchcache
# another way: tokenreviews for `--authentication kubernetes`, subjectaccessreviews for
# `--authorization kubernetes` (and for checking a client's own Impersonate-* headers),
# impersonate for what is sent upstream under the caller's name (any authentication mode but
# none), and a ClusterRole allowing `get` on /metrics, which `--authorization kubernetes`
# checks, to bind to the scraper. Cluster-scoped whatever `--namespace` says: reviews,
# identities and non-resource URLs belong to no namespace.
#
# GENERATED from the Helm chart deploy/helm/watchcache (templates/rbac-security.yaml and
# templates/rbac-metrics.yaml, default values) by deploy/helm/manifests.sh.
HEAD
  "$helm" template watchcache "$chart" --namespace ray-system \
    --show-only templates/rbac-security.yaml --show-only templates/rbac-metrics.yaml | plain
} >"$out/security-rbac.yaml"

printf '[helm] wrote %s and %s\n' "$out/watchcache.yaml" "$out/security-rbac.yaml" >&2
