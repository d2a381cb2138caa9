#!/usr/bin/env bash
# Builds BuildKit's daemon and client and RootlessKit from the Go module proxy into a cache outside the repo,
# keyed by version, and does nothing when they are already there. hack/images.py packages them, with
# buildctl-daemonless.sh taken from the same BuildKit module, as the rootless BuildKit builder image.
# Prints the folder holding buildkitd, buildctl, rootlesskit and buildctl-daemonless.sh on its last stdout line.
set -euo pipefail

BUILDKIT_VERSION=${BUILDKIT_VERSION:-v0.34.2}
ROOTLESSKIT_VERSION=${ROOTLESSKIT_VERSION:-v2.3.6}
CACHE_ROOT=${KENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kenv}
OUT="$CACHE_ROOT/bin/buildkit-$BUILDKIT_VERSION-rootlesskit-$ROOTLESSKIT_VERSION"
export GOFLAGS=-buildvcs=false GOTOOLCHAIN=${GOTOOLCHAIN:-auto}

if [ ! -x "$OUT/buildkitd" ] || [ ! -x "$OUT/buildctl" ] || [ ! -x "$OUT/rootlesskit" ] \
    || [ ! -f "$OUT/buildctl-daemonless.sh" ]; then
  dir="$CACHE_ROOT/src/buildkit-$BUILDKIT_VERSION-rootlesskit-$ROOTLESSKIT_VERSION"; mkdir -p "$dir" "$OUT"; cd "$dir"
  [ -f go.mod ] || go mod init kenv.dev/localbuildkit >&2 2>&1
  go get "github.com/moby/buildkit/cmd/buildkitd@$BUILDKIT_VERSION" "github.com/moby/buildkit/cmd/buildctl@$BUILDKIT_VERSION" \
    "github.com/rootless-containers/rootlesskit/v2/cmd/rootlesskit@$ROOTLESSKIT_VERSION" >&2
  for cmd in github.com/moby/buildkit/cmd/buildkitd github.com/moby/buildkit/cmd/buildctl \
      github.com/rootless-containers/rootlesskit/v2/cmd/rootlesskit; do
    echo "[build-buildkit] building $cmd" >&2
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$OUT/$(basename "$cmd").tmp" "$cmd"
    mv "$OUT/$(basename "$cmd").tmp" "$OUT/$(basename "$cmd")"
  done
  module=$(go list -m -f '{{.Dir}}' github.com/moby/buildkit)
  install -m 0755 "$module/examples/buildctl-daemonless/buildctl-daemonless.sh" "$OUT/buildctl-daemonless.sh"
fi

echo "$OUT"
