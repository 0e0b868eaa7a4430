#!/usr/bin/env bash
# Regenerates the plain manifests of deploy/kubernetes/ from the chart, so that they never
# drift from it (tests/integration/test_helm.py checks that they match):
#   watchcache.yaml     the chart's default rendering, release "watchcache" in ray-system
#   security-rbac.yaml  the extra RBAC of authentication kubernetes + authorization kubernetes
#                       (TokenReview, SubjectAccessReview, impersonation), on its own
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
# ConfigMaps, use the KubeRay services' proxy), a Deployment, a Service on the KubeRay
# APIServer's port and a PodDisruptionBudget. The extra rules of the security modes are in
# security-rbac.yaml.
#
# GENERATED from the Helm chart deploy/helm/watchcache with its default values by
# deploy/helm/manifests.sh; edit the chart and run that script, not this file.
HEAD
  "$helm" template watchcache "$chart" --namespace ray-system | plain
} >"$out/watchcache.yaml"

{
  cat <<'HEAD'
# The RBAC that watchcache's security modes need on top of watchcache.yaml, and why each
# rule is there. Apply it only with the modes that use it: tokenreviews for
# `--authentication kubernetes`, subjectaccessreviews for `--authorization kubernetes` (and
# for checking a client's own Impersonate-* headers), impersonate for writes sent upstream
# under the caller's name (any authentication mode but none). Cluster-scoped whatever
# `--namespace` says: reviews and identities belong to no namespace.
#
# GENERATED from the Helm chart deploy/helm/watchcache (templates/rbac-security.yaml, with
# authentication [kubernetes] and authorization kubernetes) by deploy/helm/manifests.sh.
HEAD
  "$helm" template watchcache "$chart" --namespace ray-system \
    --set 'authentication={kubernetes}' --set authorization=kubernetes \
    --show-only templates/rbac-security.yaml | plain
} >"$out/security-rbac.yaml"

printf '[helm] wrote %s and %s\n' "$out/watchcache.yaml" "$out/security-rbac.yaml" >&2
