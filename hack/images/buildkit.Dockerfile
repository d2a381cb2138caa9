# kenv's rootless BuildKit builder image, laid out like moby/buildkit:rootless but on the local Debian base:
# buildkitd, buildctl and rootlesskit built from the Go module proxy (hack/build-buildkit.sh), Debian's runc and
# newuidmap/newgidmap, user 1000 with a subordinate id range. hack/images.py builds it; the build context holds
# the binaries and buildctl-daemonless.sh from the BuildKit module.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
# newuidmap/newgidmap get file capabilities instead of the setuid bit: setuid root opens /proc/PID/uid_map as
# root, and the kernel then asks for CAP_SYS_ADMIN, which a pod's capability bounding set does not hold.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends runc uidmap libcap2-bin \
      ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && chmod u-s /usr/bin/newuidmap /usr/bin/newgidmap \
 && setcap cap_setuid=ep /usr/bin/newuidmap && setcap cap_setgid=ep /usr/bin/newgidmap \
 && useradd --uid 1000 --user-group --create-home --home-dir /home/user user \
 && mkdir -p /run/user/1000 /home/user/.local/tmp /home/user/.local/share/buildkit \
 && chown -R user:user /run/user/1000 /home/user \
 && echo user:100000:65536 > /etc/subuid && echo user:100000:65536 > /etc/subgid
COPY buildkitd buildctl rootlesskit buildctl-daemonless.sh /usr/bin/
USER 1000:1000
ENV HOME=/home/user USER=user XDG_RUNTIME_DIR=/run/user/1000 TMPDIR=/home/user/.local/tmp \
    BUILDKIT_HOST=unix:///run/user/1000/buildkit/buildkitd.sock
ENTRYPOINT ["rootlesskit", "buildkitd"]
