#!/usr/bin/env bash
# Builds the ML workload controllers kenv is tried with, from the Go module proxy into a cache outside the repo,
# keyed by version; does nothing for one already there. Only the named ones are built (the tests that need a
# controller ask for it):
#   training-operator   github.com/kubeflow/training-operator  $TRAINING_OPERATOR_VERSION  (PyTorchJob)
#   kuberay             github.com/ray-project/kuberay/ray-operator  $KUBERAY_VERSION  (RayJob, RayCluster)
#   jobset              sigs.k8s.io/jobset  $JOBSET_VERSION
#   kueue               sigs.k8s.io/kueue  $KUEUE_VERSION
# Prints one line per name: NAME<TAB>VERSION<TAB>BINARY<TAB>MODULE_DIR (the module's files: CRDs, webhook manifests).
set -euo pipefail

TRAINING_OPERATOR_VERSION=${TRAINING_OPERATOR_VERSION:-v1.9.4}
KUBERAY_VERSION=${KUBERAY_VERSION:-v1.5.1}
JOBSET_VERSION=${JOBSET_VERSION:-v0.11.1}
KUEUE_VERSION=${KUEUE_VERSION:-v0.17.1}
CACHE_ROOT=${KENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kenv}
export GOFLAGS=-buildvcs=false GOTOOLCHAIN=${GOTOOLCHAIN:-auto}

# name -> module, version, main package
spec() {
  case "$1" in
    training-operator) echo "github.com/kubeflow/training-operator $TRAINING_OPERATOR_VERSION cmd/training-operator.v1" ;;
    kuberay) echo "github.com/ray-project/kuberay/ray-operator $KUBERAY_VERSION ." ;;
    jobset) echo "sigs.k8s.io/jobset $JOBSET_VERSION ." ;;
    kueue) echo "sigs.k8s.io/kueue $KUEUE_VERSION cmd/kueue" ;;
    *) echo "unknown controller '$1' (one of: training-operator kuberay jobset kueue)" >&2; return 1 ;;
  esac
}

[ $# -gt 0 ] || { echo "usage: $0 training-operator|kuberay|jobset|kueue ..." >&2; exit 2; }
for name in "$@"; do
  read -r module version main < <(spec "$name")
  out="$CACHE_ROOT/bin/$name-$version"
  # A wrapper module rather than `go install module@version`: go install looks the module's deprecation up in
  # its version list, which the proxy refuses for some of these (403), while `go get` of an exact version works.
  dir="$CACHE_ROOT/src/$name-$version"; mkdir -p "$dir" "$out"
  if [ ! -x "$out/$name" ]; then
    (cd "$dir"
     [ -f go.mod ] || go mod init "kenv.dev/local-$name" >&2 2>&1
     pkg="$module"; [ "$main" = . ] || pkg="$module/$main"
     go get "$pkg@$version" >&2
     echo "[build-frameworks] building $pkg $version" >&2
     CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out/$name.tmp" "$pkg"
     mv "$out/$name.tmp" "$out/$name")
  fi
  src=$(cd "$dir" && go mod download -json "$module@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  printf '%s\t%s\t%s\t%s\n' "$name" "$version" "$out/$name" "$src"
done
