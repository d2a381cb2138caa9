# kenv's buildah builder image: Debian's buildah on the local Debian base (hack/images.py builds it).
# The build Job runs `buildah bud --isolation chroot --storage-driver vfs` as root inside the pod; see
# operator/kenv/builds.py for the capabilities it is given.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends buildah ca-certificates \
 && rm -rf /var/lib/apt/lists/*
ENV STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot
