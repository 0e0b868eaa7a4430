#!/usr/bin/env bash
# Builds the local control plane (kube-apiserver, kubectl, etcd) from source through the
# Go module proxy, and unpacks the KubeRay CRDs and samples, into a cache folder outside
# the repository. Reuses whatever is already there. Prints the folder on its last line.
#
#   deploy/controlplane/build.sh            build what is missing
#   WATCHCACHE_CACHE=/path build.sh         cache root (default ~/.cache/watchcache)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export GOWORK=off CGO_ENABLED=0 GOFLAGS=-mod=mod

version() { (cd "$here/$1" && go list -m -f '{{.Version}}' "$2"); }
k8s_version="$(version kube-apiserver k8s.io/kubernetes)"
etcd_version="$(version etcd go.etcd.io/etcd/server/v3)"
kuberay_version="$(version kuberay github.com/ray-project/kuberay/ray-operator)"
out="${WATCHCACHE_CACHE:-$HOME/.cache/watchcache}/controlplane/k8s-${k8s_version}_etcd-${etcd_version}_kuberay-${kuberay_version}"
mkdir -p "$out/bin"

say() { printf '[controlplane] %s\n' "$*" >&2; }

# The checksum database may be out of reach; the committed go.sum files still verify
# every module, so fall back to them alone rather than fail.
if ! go env GOSUMDB | grep -q off && ! timeout 20 go mod download -json golang.org/x/text@v0.1.0 >/dev/null 2>&1; then
  export GOSUMDB=off
fi

# Runs a `go build -v`, printing a count of compiled packages so a long first build shows progress.
build() {
  local name="$1" dir="$2" pkg="$3"; shift 3
  if [[ -x "$out/bin/$name" ]]; then say "$name: cached"; return; fi
  say "$name: building $pkg from source (the first build takes several minutes on 2 cores)"
  local start=$SECONDS n=0
  ( cd "$dir" && go build -v -trimpath "$@" -o "$out/bin/$name.tmp" "$pkg" ) 2>&1 | while IFS= read -r line; do
    case "$line" in
      *" "*|*:*) printf '%s\n' "$line" >&2 ;;  # errors and warnings go through whole
      *) n=$((n + 1)); if (( n % 100 == 0 )); then say "$name: $n packages compiled ($((SECONDS - start))s)"; fi ;;
    esac
  done
  if [[ ! -x "$out/bin/$name.tmp" ]]; then say "$name: build failed"; exit 1; fi
  mv "$out/bin/$name.tmp" "$out/bin/$name"
  say "$name: done in $((SECONDS - start))s"
}

minor="${k8s_version#v1.}"; minor="${minor%%.*}"
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=${k8s_version} -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor} -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=${k8s_version} -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=${minor}"

build etcd "$here/etcd" go.etcd.io/etcd/server/v3 -ldflags "-s -w"
build kube-apiserver "$here/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver -ldflags "$ldflags"
build kubectl "$here/kube-apiserver" k8s.io/kubernetes/cmd/kubectl -ldflags "$ldflags"

if [[ ! -f "$out/kuberay/crd/ray.io_rayclusters.yaml" ]]; then
  say "kuberay: unpacking CRDs and samples of ray-operator ${kuberay_version}"
  src="$(cd "$here/kuberay" && go mod download -json github.com/ray-project/kuberay/ray-operator | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  rm -rf "$out/kuberay.tmp" && mkdir -p "$out/kuberay.tmp"
  cp -r "$src/config/crd/bases" "$out/kuberay.tmp/crd"
  cp -r "$src/config/samples" "$out/kuberay.tmp/samples"
  chmod -R u+w "$out/kuberay.tmp"
  rm -rf "$out/kuberay" && mv "$out/kuberay.tmp" "$out/kuberay"
fi
say "ready: $out"
printf '%s\n' "$out"
