#!/usr/bin/env bash
# Builds the Kaniko executor from the Go module proxy into a cache outside the repo, keyed by version, and does
# nothing when it is already there. hack/images.py packages it as the Kaniko executor image the build pods run.
# The maintained fork is built by default; KANIKO_MODULE=github.com/GoogleContainerTools/kaniko
# KANIKO_VERSION=v1.24.0 builds the last upstream release instead (neither go.mod has replace directives).
# Prints the executor's path on its last stdout line.
set -euo pipefail

KANIKO_MODULE=${KANIKO_MODULE:-github.com/chainguard-dev/kaniko}
KANIKO_VERSION=${KANIKO_VERSION:-v1.25.6}
CACHE_ROOT=${KENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kenv}
OUT="$CACHE_ROOT/bin/kaniko-$KANIKO_VERSION"
case "$KANIKO_MODULE" in
  github.com/chainguard-dev/kaniko) ;;
  *) OUT="$OUT-${KANIKO_MODULE//\//_}" ;;
esac
export GOFLAGS=-buildvcs=false GOTOOLCHAIN=${GOTOOLCHAIN:-auto}

if [ ! -x "$OUT/executor" ]; then
  # A wrapper module rather than `go install module/cmd/executor@version`: go install looks up the module's
  # deprecation in its version list, which the proxy refuses for kaniko (403), while `go get` of the exact
  # version only warns. Neither go.mod has replace directives, so no replace lines are needed here.
  dir="$CACHE_ROOT/src/kaniko-$KANIKO_VERSION-${KANIKO_MODULE//\//_}"; mkdir -p "$dir" "$OUT"; cd "$dir"
  [ -f go.mod ] || go mod init kenv.dev/localkaniko >&2 2>&1
  go get "$KANIKO_MODULE/cmd/executor@$KANIKO_VERSION" >&2
  echo "[build-kaniko] building $KANIKO_MODULE/cmd/executor $KANIKO_VERSION" >&2
  # Static, like the upstream image's binary: its image holds nothing else (FROM scratch, hack/images.py).
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X $KANIKO_MODULE/pkg/version.version=$KANIKO_VERSION" \
    -o "$OUT/executor.tmp" "$KANIKO_MODULE/cmd/executor"
  mv "$OUT/executor.tmp" "$OUT/executor"
fi

echo "$OUT/executor"
