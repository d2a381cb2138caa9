#!/usr/bin/env bash
# Builds the local control plane's binaries from the Go module proxy into a cache outside the repo,
# keyed by version, and does nothing when they are already there.
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl,
#   kubelet, kube-proxy                                            (k8s.io/kubernetes $KUBE_VERSION)
#   etcd                                                           (go.etcd.io/etcd/server/v3 $ETCD_VERSION)
#   helm                                                           (helm.sh/helm/v3 $HELM_VERSION)
#   registry-$REGISTRY_VERSION     (github.com/distribution/distribution/v3: OCI distribution 1.1, tag deletion)
#   coredns-$COREDNS_VERSION       (github.com/coredns/coredns: the cluster DNS, with only the plugins it uses)
# Prints the folder holding the binaries (the envtest KUBEBUILDER_ASSETS convention).
set -euo pipefail

KUBE_VERSION=${KUBE_VERSION:-v1.34.4}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
HELM_VERSION=${HELM_VERSION:-v3.19.5}
REGISTRY_VERSION=${REGISTRY_VERSION:-v3.1.2}
COREDNS_VERSION=${COREDNS_VERSION:-v1.14.0}
CACHE_ROOT=${KENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kenv}
OUT="$CACHE_ROOT/bin/k8s-$KUBE_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION"
WORK="$CACHE_ROOT/src"
export GOFLAGS=-buildvcs=false GOTOOLCHAIN=${GOTOOLCHAIN:-auto}

need() { for b in "$@"; do [ -x "$OUT/$b" ] || return 0; done; return 1; }
log() { echo "[build-binaries] $*" >&2; }
mkdir -p "$OUT" "$WORK"

# Kubernetes: a wrapper module that replaces every staging module (k8s.io/X => ./staging/...) with its
# published v0.MINOR.PATCH tag, because `go install k8s.io/kubernetes/cmd/...@v` refuses replace directives.
KUBE_CMDS="kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy"
# shellcheck disable=SC2086
if need $KUBE_CMDS; then
  dir="$WORK/kube-$KUBE_VERSION"; mkdir -p "$dir"; cd "$dir"
  staging_tag="v0.${KUBE_VERSION#v1.}"
  gomod=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  {
    echo "module kenv.dev/localkube"; echo; echo "go 1.24"; echo
    echo "require k8s.io/kubernetes $KUBE_VERSION"; echo
    grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$gomod" | awk -v t="$staging_tag" '{print "replace " $1 " => " $1 " " t}'
  } > go.mod
  for cmd in $KUBE_CMDS; do
    go get "k8s.io/kubernetes/cmd/$cmd@$KUBE_VERSION" >&2
  done
  minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
  ld="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1"
  ld="$ld -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION"
  ld="$ld -X k8s.io/component-base/version.gitTreeState=clean"
  for cmd in $KUBE_CMDS; do
    [ -x "$OUT/$cmd" ] && continue
    log "building $cmd $KUBE_VERSION"
    go build -trimpath -ldflags "$ld" -o "$OUT/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd" && mv "$OUT/$cmd.tmp" "$OUT/$cmd"
  done
fi

if need etcd; then
  dir="$WORK/etcd-$ETCD_VERSION"; mkdir -p "$dir"; cd "$dir"
  [ -f go.mod ] || go mod init kenv.dev/localetcd >&2 2>&1
  go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >&2
  log "building etcd $ETCD_VERSION"
  go build -trimpath -ldflags "-s -w" -o "$OUT/etcd.tmp" go.etcd.io/etcd/server/v3 && mv "$OUT/etcd.tmp" "$OUT/etcd"
fi

if need helm; then
  log "building helm $HELM_VERSION"
  GOBIN="$OUT" go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
fi

if need "registry-$REGISTRY_VERSION"; then
  log "building registry $REGISTRY_VERSION"
  GOBIN="$WORK/registry-$REGISTRY_VERSION" go install -trimpath -ldflags "-s -w" \
    "github.com/distribution/distribution/v3/cmd/registry@$REGISTRY_VERSION" >&2
  mv "$WORK/registry-$REGISTRY_VERSION/registry" "$OUT/registry-$REGISTRY_VERSION"
fi

# CoreDNS with the plugins the local cluster's Corefile uses (hack/localcluster.py) rather than all ~60: the
# kubernetes plugin answers for Services and pods, forward sends the rest to the machine's resolver.
if need "coredns-$COREDNS_VERSION"; then
  dir="$WORK/coredns-$COREDNS_VERSION"; mkdir -p "$dir"; cd "$dir"
  [ -f go.mod ] || go mod init kenv.dev/localcoredns >&2 2>&1
  plugins="bind cache errors forward health kubernetes log ready"
  {
    echo "package main"; echo; echo "import ("
    for p in $plugins; do echo "	_ \"github.com/coredns/coredns/plugin/$p\""; done
    echo "	\"github.com/coredns/coredns/coremain\""; echo ")"; echo
    echo "func main() { coremain.Run() }"
  } > main.go
  for p in $plugins coremain; do
    case $p in coremain) pkg=coremain ;; *) pkg=plugin/$p ;; esac
    go get "github.com/coredns/coredns/$pkg@$COREDNS_VERSION" >&2
  done
  log "building coredns $COREDNS_VERSION"
  go build -trimpath -ldflags "-s -w" -o "$OUT/coredns-$COREDNS_VERSION.tmp" . && mv "$OUT/coredns-$COREDNS_VERSION.tmp" "$OUT/coredns-$COREDNS_VERSION"
fi

echo "$OUT"
