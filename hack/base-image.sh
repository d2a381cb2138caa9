#!/usr/bin/env bash
# Makes the base image the examples and tests build on, with no registry to pull from: a Debian bookworm
# root filesystem from Debian's own mirror (debootstrap, cached outside the repo), committed FROM scratch by
# buildah and pushed to the local registry as $KENV_REGISTRY/kenv/base/python:3.11-bookworm.
# Prints the pushed reference. Idempotent: the rootfs tarball is reused, the push is skipped if present.
set -euo pipefail
: "${KENV_REGISTRY:?set KENV_REGISTRY (eval \"\$(hack/cluster up)\")}"
CACHE_ROOT=${KENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kenv}
SUITE=bookworm
TARBALL="$CACHE_ROOT/base/debian-$SUITE-python3-v2.tar"
REF="$KENV_REGISTRY/kenv/base/python:3.11-$SUITE"
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if curl -fsS -o /dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json' \
    "http://$KENV_REGISTRY/v2/kenv/base/python/manifests/3.11-$SUITE"; then
  echo "$REF"; exit 0
fi
if [ ! -f "$TARBALL" ]; then
  command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >&2
  root=$(mktemp -d "$CACHE_ROOT/rootfs.XXXXXX"); mkdir -p "$(dirname "$TARBALL")"
  echo "[base-image] debootstrap $SUITE into $root (first time only, a few minutes)" >&2
  debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates "$SUITE" "$root" "$MIRROR" >&2
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -cf "$TARBALL.tmp" . && mv "$TARBALL.tmp" "$TARBALL" && rm -rf "$root"
fi
ctr=$(buildah --storage-driver vfs from scratch)
trap 'buildah --storage-driver vfs rm "$ctr" >/dev/null 2>&1 || true' EXIT
buildah --storage-driver vfs add "$ctr" "$TARBALL" / >&2
buildah --storage-driver vfs config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --cmd /usr/bin/python3 "$ctr" >&2
buildah --storage-driver vfs commit "$ctr" "$REF" >&2
buildah --storage-driver vfs push --tls-verify=false "$REF" "docker://$REF" >&2
echo "$REF"
