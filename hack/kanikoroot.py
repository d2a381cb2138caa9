"""A stand-in for the Kaniko *container*, so the fakelet can run the real executor binary (hack/build-kaniko.sh).

Kaniko unpacks the base image onto its own "/" and runs the Dockerfile's RUN steps there, so it must never see
the host's root. A kubelet would give it a container; here it gets a fresh directory and a chroot:

    <work>/root/                           the "container rootfs", kaniko's "/"
        kaniko/executor                    the image's content: the executor and the CA bundle
        kaniko/ssl/certs/ca-certificates.crt
        <each volumeMount's mountPath>     bind mounts (read-only) of the pod's ConfigMap/Secret files
        dev/                               a small tmpfs: null zero full random urandom tty, shm, termination-log
        proc/                              a fresh proc of the new PID namespace
        etc/resolv.conf, hosts, hostname   bind mounts, as a kubelet makes them
    <work>/volumes/N/                      the volume files, as a kubelet writes them
    <work>/termination-log                 bound onto /dev/termination-log: the digest lands here

Everything runs under `unshare --mount --pid --fork`: the mounts exist only in the new mount namespace and go
away with its last process, and when the executor (PID 1 of the new PID namespace) dies, the kernel kills every
RUN step it left behind, so a crash or a deleted pod cannot leak mounts or processes. The host only ever sees
plain directories under <work>, which `cleanup()` removes (after checking that nothing is mounted there).

Because every volume and /etc file is a real mount point, Kaniko's /proc/self/mountinfo shows them and Kaniko
leaves them out of the image, exactly as in a pod.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from pathlib import Path

HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# The ENV of the Kaniko image (gcr.io/kaniko-project/executor and the fork's), before the pod's env.
IMAGE_ENV = {"PATH": "/usr/local/bin:/kaniko", "HOME": "/root", "USER": "root",
             "SSL_CERT_DIR": "/kaniko/ssl/certs", "DOCKER_CONFIG": "/kaniko/.docker/"}
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
# Kaniko refuses to run unless /proc/self/cgroup (or the like) names a container runtime, and a chroot is no
# runtime it knows. --force only skips that check; it is added here, never to the operator's Job args.
EMULATION_ARGS = ("--force",)


def container_env(container: dict, pod_name: str) -> dict[str, str]:
    """The environment a kubelet would give the container: image ENV, HOSTNAME, the pod's literal env values,
    and the host's proxy settings (with the loopback registry always excluded from the proxy)."""
    env = {**IMAGE_ENV, "HOSTNAME": pod_name}
    env |= {e["name"]: e.get("value", "") for e in container.get("env") or [] if "valueFrom" not in e}
    env |= {k: os.environ[k] for k in PROXY_VARS if k in os.environ}
    for key in ("NO_PROXY", "no_proxy"):
        env[key] = ",".join(filter(None, ["127.0.0.1", "localhost", env.get(key, "")]))
    return env


class ContainerRoot:
    """One container's root directory; `command()` gives the argv that runs the executor inside it."""

    def __init__(self, executor: str | Path, hostname: str, parent: str | Path | None = None) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="fakelet-kaniko-", dir=parent))
        self.root = self.work / "root"
        self.termination_log = self.work / "termination-log"
        self.termination_log.touch()
        self.hostname = self.work / "hostname"
        self.hostname.write_text(hostname + "\n")
        self._mounts: list[tuple[Path, str]] = []  # (host directory, mountPath in the container)
        kaniko = self.root / "kaniko"
        (kaniko / "ssl/certs").mkdir(parents=True)
        try:  # the executor is never written to; a hard link saves copying ~80 MB per build
            os.link(executor, kaniko / "executor")
        except OSError:
            shutil.copy2(executor, kaniko / "executor")
        shutil.copyfile(HOST_CA_BUNDLE, kaniko / "ssl/certs/ca-certificates.crt")
        for name in ("dev", "proc", "etc"):
            (self.root / name).mkdir()

    def add_volume(self, mount_path: str, files: dict[str, bytes]) -> None:
        """Files (relative path -> content) of one volumeMount, mounted read-only at mount_path."""
        source = self.work / "volumes" / str(len(self._mounts))
        source.mkdir(parents=True)
        for rel, content in files.items():
            (source / rel).parent.mkdir(parents=True, exist_ok=True)
            (source / rel).write_bytes(content)
        self._mounts.append((source, mount_path))

    def command(self, args: list[str], env: dict[str, str]) -> list[str]:
        """unshare + mount script + `env -i ... chroot ROOT /kaniko/executor ARGS`."""
        r = shlex.quote(str(self.root))
        lines = [
            "set -eu",
            f"mount -t proc proc {r}/proc",
            f"mount -t tmpfs -o mode=755,nosuid tmpfs {r}/dev",
            *(f"touch {r}/dev/{d} && mount --bind /dev/{d} {r}/dev/{d}" for d in DEVICES),
            f"mkdir {r}/dev/shm && mount -t tmpfs -o mode=1777,nosuid,nodev shm {r}/dev/shm",
            f"ln -s /proc/self/fd {r}/dev/fd && ln -s /proc/self/fd/0 {r}/dev/stdin",
            f"ln -s /proc/self/fd/1 {r}/dev/stdout && ln -s /proc/self/fd/2 {r}/dev/stderr",
            self._bind(self.termination_log, "/dev/termination-log", file=True, read_only=False),
            self._bind(Path("/etc/resolv.conf"), "/etc/resolv.conf", file=True),
            self._bind(Path("/etc/hosts"), "/etc/hosts", file=True),
            self._bind(self.hostname, "/etc/hostname", file=True),
            *(self._bind(source, target) for source, target in self._mounts),
            'exec "$@"',
        ]
        inner = ["env", "-i", *(f"{k}={v}" for k, v in env.items()),
                 shutil.which("chroot") or "/usr/sbin/chroot", str(self.root), "/kaniko/executor", *args,
                 *EMULATION_ARGS]
        return ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child",
                "sh", "-c", "\n".join(lines), "kanikoroot", *inner]

    def _bind(self, source: Path, target: str, file: bool = False, read_only: bool = True) -> str:
        dest = shlex.quote(str(self.root) + "/" + target.strip("/"))
        make = f"mkdir -p $(dirname {dest}) && touch {dest}" if file else f"mkdir -p {dest}"
        line = f"{make} && mount --bind {shlex.quote(str(source))} {dest}"
        return line + (f" && mount -o remount,bind,ro {dest}" if read_only else "")

    def termination_message(self) -> str:
        return self.termination_log.read_text(errors="replace").strip()

    def cleanup(self) -> None:
        """Remove the work directory, unless something is (wrongly) still mounted under it in this namespace."""
        prefix = str(self.work) + "/"
        with open("/proc/self/mountinfo") as mountinfo:
            leaked = [line.split()[4] for line in mountinfo if (line.split()[4] + "/").startswith(prefix)]
        if leaked:
            raise RuntimeError(f"not removing {self.work}: still mounted there: {leaked}")
        shutil.rmtree(self.work, ignore_errors=True)
