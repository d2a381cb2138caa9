"""The kubelet stand-in for the local cluster: it never runs containers, it only reports as if it had.

It watches the pods bound to the fake node and writes their status through the `status` subresource:
- build pods (label kenv.dev/role=build, Kaniko-style args) are really built on the host with buildah from
  the ConfigMap-backed context and pushed to the registry; the digest lands in the termination message, as
  Kaniko's --digest-file=/dev/termination-log would;
- with a Kaniko executor configured (`kaniko=PATH`, --kaniko or KENV_FAKELET_KANIKO; hack/build-kaniko.sh
  builds one), build pods whose image names kaniko run that real executor with the pod's args, env and
  volumes, in a chroot that stands in for the container (hack/kanikoroot.py);
- a pod annotated kenv.dev/fakelet-exit: "N" terminates with exit code N;
- any other pod is reported Running (and Ready) forever;
- a pod being deleted is confirmed gone (grace period 0), as a kubelet does after killing its containers.
`hold` keeps matching pods Running until `complete()` is called, for concurrency tests.

    python hack/fakelet.py --kubeconfig PATH [--node kenv-node] [--logs-dir DIR] [--kaniko EXECUTOR]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kanikoroot import ContainerRoot, container_env  # noqa: E402
from kubeapi import KubeAPI  # noqa: E402
from localcluster import NODE_NAME  # noqa: E402

BUILD_LABEL = ("kenv.dev/role", "build")
EXIT_ANNOTATION = "kenv.dev/fakelet-exit"
BUILDAH = ["buildah", "--storage-driver", "vfs"]
PodKey = tuple[str, str]  # (namespace, name)
HoldSpec = Callable[[dict], bool] | Iterable[str] | bool | None  # a predicate on the pod, pod names, or all


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _key(pod: dict) -> PodKey:
    return pod["metadata"]["namespace"], pod["metadata"]["name"]


def kaniko_args(container: dict) -> dict[str, list[str]]:
    """`--flag=value` and `--flag value` args of a Kaniko container, as {flag: [values]}."""
    args, out, i = list(container.get("args") or []), {}, 0
    while i < len(args):
        flag, sep, value = args[i].partition("=")
        if not sep and i + 1 < len(args) and not args[i + 1].startswith("--"):
            value, i = args[i + 1], i + 1
        out.setdefault(flag.lstrip("-"), []).append(value)
        i += 1
    return out


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


class BuildFailed(Exception):
    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Fakelet:
    def __init__(self, kubeconfig: str | Path, node_name: str = NODE_NAME, registry: str | None = None,
                 logs_dir: str | Path | None = None, hold: HoldSpec = None, max_parallel_builds: int = 2,
                 kaniko: str | None = None):
        self.api = KubeAPI(kubeconfig)
        # The real Kaniko executor for Kaniko build pods; None: build them with buildah on the host. Read at
        # each build, so a test may set it on a running fakelet.
        self.kaniko = kaniko or os.environ.get("KENV_FAKELET_KANIKO") or None
        self.node_name = node_name
        self.registry = registry
        self.logs_dir = Path(logs_dir or tempfile.mkdtemp(prefix="fakelet-logs-"))
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.hold = hold
        self.builds: list[dict] = []  # one record per successful build: namespace, pod, digest, seconds...
        self._held: dict[PodKey, dict] = {}
        self._seen: set[str] = set()  # pod uids already started
        self._running: dict[PodKey, subprocess.Popen] = {}  # live build processes, to kill on pod deletion
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_parallel_builds, thread_name_prefix="fakelet-build")
        self._thread = threading.Thread(target=self._watch_forever, name="fakelet-watch", daemon=True)
        self._stream = None

    # -- public

    def start(self) -> Fakelet:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._stream is not None:
            with contextlib.suppress(AttributeError, OSError):  # wake the watch thread's blocking read
                self._stream.fp.raw._sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=15)
        with self._lock:
            procs = list(self._running.values())
        for proc in procs:
            _kill_group(proc)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def held(self) -> list[PodKey]:
        with self._lock:
            return sorted(self._held)

    def complete(self, pod: str | PodKey, exit_code: int | None = None) -> None:
        """Let a held pod finish: build it (build pods) or exit with exit_code (default: annotation, or 0).
        An explicit exit_code also ends a build pod without building (a failed build, say)."""
        with self._lock:
            key = pod if isinstance(pod, tuple) else next(k for k in self._held if k[1] == pod)
            obj = self._held.pop(key)
        self._finish(obj, exit_code)

    def log_path(self, namespace: str, pod: str) -> Path:
        return self.logs_dir / f"{namespace}_{pod}.log"

    # -- watching

    def _watch_forever(self) -> None:
        base = f"/api/v1/pods?fieldSelector=spec.nodeName%3D{self.node_name}"
        while not self._stop.is_set():
            try:
                listing = self.api.request("GET", base)
                for pod in listing["items"]:
                    self._on_pod(pod)
                rv = listing["metadata"]["resourceVersion"]
                while not self._stop.is_set():
                    rv = self._watch_once(f"{base}&watch=1&timeoutSeconds=120", rv)
            except Exception as e:  # noqa: BLE001 - keep the kubelet alive; re-list and carry on
                if not self._stop.is_set():
                    print(f"[fakelet] watch error, re-listing: {e!r}", file=sys.stderr)
                    time.sleep(0.5)

    def _watch_once(self, path: str, rv: str) -> str:
        """One watch request from rv until the server closes it; returns the last resourceVersion seen."""
        self._stream = self.api.stream(f"{path}&resourceVersion={rv}", timeout=150)
        with self._stream as resp:
            for line in resp:
                event = json.loads(line)
                if event["type"] == "ERROR":  # typically 410 Gone: resourceVersion too old
                    raise RuntimeError(event["object"].get("message"))
                rv = event["object"]["metadata"]["resourceVersion"]
                if event["type"] in ("ADDED", "MODIFIED"):
                    self._on_pod(event["object"])
        return rv

    def _on_pod(self, pod: dict) -> None:
        meta = pod["metadata"]
        if meta.get("deletionTimestamp"):
            self._on_delete(pod)
            return
        if meta["uid"] in self._seen or pod.get("status", {}).get("phase") not in (None, "Pending"):
            return
        self._set_running(pod)
        self._seen.add(meta["uid"])  # only now: if reporting failed, the re-list after the error retries it
        if self._should_hold(pod):
            with self._lock:
                self._held[_key(pod)] = pod
        elif self._is_build(pod) or EXIT_ANNOTATION in meta.get("annotations", {}):
            self._finish(pod, None)

    def _should_hold(self, pod: dict) -> bool:
        hold = self.hold
        if callable(hold):
            return bool(hold(pod))
        if isinstance(hold, bool) or hold is None:
            return bool(hold)
        return pod["metadata"]["name"] in set(hold)

    def _on_delete(self, pod: dict) -> None:
        key = _key(pod)
        with self._lock:
            self._held.pop(key, None)
            proc = self._running.pop(key, None)
        if proc is not None:
            _kill_group(proc)
        ns, name = key
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                "preconditions": {"uid": pod["metadata"]["uid"]}}
        try:
            self.api.request("DELETE", f"/api/v1/namespaces/{ns}/pods/{name}", body)
        except urllib.error.HTTPError as e:
            if e.code not in (404, 409):
                raise

    # -- pod outcomes

    @staticmethod
    def _is_build(pod: dict) -> bool:
        return pod["metadata"].get("labels", {}).get(BUILD_LABEL[0]) == BUILD_LABEL[1]

    def _finish(self, pod: dict, exit_code: int | None) -> None:
        """Terminate the pod: builds go to the pool (minutes), exits are one PATCH done right here."""
        if self._is_build(pod) and exit_code is None:
            self._pool.submit(self._build_and_report, pod)
            return
        if exit_code is None:
            exit_code = int(pod["metadata"].get("annotations", {}).get(EXIT_ANNOTATION, "0"))
        self._set_terminated(pod, exit_code, "")

    def _build_and_report(self, pod: dict) -> None:
        try:
            try:
                self._set_terminated(pod, 0, self._build(pod))
            except BuildFailed as e:
                self._set_terminated(pod, e.exit_code, str(e))
        except Exception as e:  # noqa: BLE001 - a thread pool would swallow it silently
            print(f"[fakelet] {_key(pod)}: {e!r}", file=sys.stderr)

    def _set_running(self, pod: dict) -> None:
        started = _now()
        self._patch_status(pod, "Running", [
            self._container_status(c, {"running": {"startedAt": started}}, ready=True)
            for c in pod["spec"]["containers"]], ready=True, started=started)

    def _set_terminated(self, pod: dict, exit_code: int, message: str) -> None:
        state = {"terminated": {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                                "message": message, "startedAt": pod.get("_startedAt", _now()),
                                "finishedAt": _now(), "containerID": f"fakelet://{pod['metadata']['uid']}"}}
        self._patch_status(pod, "Succeeded" if exit_code == 0 else "Failed", [
            self._container_status(c, state, ready=False) for c in pod["spec"]["containers"]], ready=False)

    @staticmethod
    def _container_status(container: dict, state: dict, ready: bool) -> dict:
        return {"name": container["name"], "image": container["image"], "imageID": "", "ready": ready,
                "started": "running" in state, "restartCount": 0, "state": state}

    def _patch_status(self, pod: dict, phase: str, statuses: list[dict], ready: bool,
                      started: str | None = None) -> None:
        now = _now()
        def cond(kind: str, ok: bool, reason: str | None = None) -> dict:
            extra = {"reason": reason} if reason else {}
            return {"type": kind, "status": "True" if ok else "False", "lastTransitionTime": now, **extra}

        done_reason = None if ready else "PodCompleted"
        status = {
            "phase": phase, "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": "10.244.0.1", "podIPs": [{"ip": "10.244.0.1"}],
            "conditions": [cond("PodScheduled", True), cond("Initialized", True),
                           cond("ContainersReady", ready, done_reason), cond("Ready", ready, done_reason)],
            "containerStatuses": statuses,
            "initContainerStatuses": [
                self._container_status(c, {"terminated": {"exitCode": 0, "reason": "Completed"}}, ready=False)
                for c in pod["spec"].get("initContainers") or []],
        }
        if started:
            status["startTime"] = started
            pod["_startedAt"] = started
        ns, name = _key(pod)
        # merge-patch replaces lists wholesale, which is what a kubelet's full status update amounts to.
        try:
            # The uid in the patch is a precondition: a recreated pod of the same name gets a 409.
            body = {"metadata": {"uid": pod["metadata"]["uid"]}, "status": status}
            self.api.request("PATCH", f"/api/v1/namespaces/{ns}/pods/{name}/status", body,
                             "application/merge-patch+json")
        except urllib.error.HTTPError as e:
            if e.code not in (404, 409):  # deleted (or replaced) meanwhile: nothing left to report
                raise

    # -- building

    def _build(self, pod: dict) -> str:
        """Build and push as the pod's Kaniko container would; return the pushed digest."""
        ns, name = _key(pod)
        container = pod["spec"]["containers"][0]
        args = kaniko_args(container)
        destinations = args.get("destination") or []
        if not destinations:
            raise BuildFailed("no --destination in the build container's args")
        t0 = time.monotonic()
        with open(self.log_path(ns, name), "w") as log:
            kaniko = self.kaniko if "kaniko" in container["image"] else None
            digest = self._build_with_kaniko(pod, container, kaniko, log) if kaniko else \
                self._build_with_buildah(pod, container, args, destinations, log)
        self.builds.append({"namespace": ns, "pod": name, "destination": destinations, "digest": digest,
                            "builder": "kaniko" if kaniko else "buildah",
                            "seconds": round(time.monotonic() - t0, 2)})
        return digest

    def _build_with_buildah(self, pod: dict, container: dict, args: dict[str, list[str]],
                            destinations: list[str], log) -> str:
        with tempfile.TemporaryDirectory(prefix="fakelet-ctx-") as tmp:
            ctx = Path(tmp, "context")
            context_root = (args.get("context") or ["dir:///workspace"])[-1].removeprefix("dir://")
            self._materialize_context(pod, container, context_root, ctx)
            dockerfile = (args.get("dockerfile") or ["Dockerfile"])[-1]
            dockerfile_path = ctx / Path(dockerfile).relative_to(context_root) if dockerfile.startswith("/") \
                else ctx / dockerfile
            digest_file = Path(tmp, "digest")
            tls = "--tls-verify=false" if self._insecure(destinations[0]) else "--tls-verify=true"
            build_args = [f"--build-arg={a}" for a in args.get("build-arg", [])]
            steps = [[*BUILDAH, "bud", "--isolation", "chroot", tls, *build_args, "-f", dockerfile_path,
                      "-t", destinations[0], ctx]]
            steps += [[*BUILDAH, "push", tls, "--digestfile", digest_file, destinations[0], f"docker://{dest}"]
                      for dest in destinations]
            steps.append([*BUILDAH, "rmi", destinations[0]])  # vfs copies every layer: free the space now
            for step in steps:
                self._run_step(pod, [str(a) for a in step], log, fatal=step[3] != "rmi")
            return digest_file.read_text().strip()

    def _build_with_kaniko(self, pod: dict, container: dict, executor: str, log) -> str:
        """Run the real executor with the pod's args, env and volumes in a stand-in container (kanikoroot)."""
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        root = ContainerRoot(executor, hostname=pod["metadata"]["name"])
        try:
            for mount in container.get("volumeMounts") or []:
                root.add_volume(mount["mountPath"], self._volume_files(pod, volumes[mount["name"]]))
            args = list(container.get("args") or [])
            shown = f"chroot {root.root} /kaniko/executor {' '.join(args)}"
            self._run_step(pod, root.command(args, container_env(container, pod["metadata"]["name"])), log,
                           fatal=True, shown=shown)
            digest = root.termination_message()
        finally:
            root.cleanup()
        if not digest.startswith("sha256:"):
            raise BuildFailed(f"kaniko exited 0 but wrote no digest to /dev/termination-log: {digest!r}")
        return digest

    def _run_step(self, pod: dict, argv: list[str], log, fatal: bool, shown: str | None = None) -> None:
        log.write(f"$ {shown or ' '.join(argv)}\n")
        log.flush()
        key = _key(pod)
        # Own process group so deleting the pod can kill the builder and everything it started.
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        with self._lock:
            self._running[key] = proc
        code = proc.wait()
        with self._lock:
            self._running.pop(key, None)
        if code != 0 and fatal:
            log.flush()
            tail = Path(log.name).read_text(errors="replace").splitlines()[-20:]
            raise BuildFailed("\n".join(tail), code if code > 0 else 128 - code)

    def _insecure(self, destination: str) -> bool:
        host = destination.split("/", 1)[0]
        return host == self.registry or host.startswith(("127.0.0.1", "localhost"))

    def _materialize_context(self, pod: dict, container: dict, context_root: str, target: Path) -> None:
        """Write the volumes mounted at or under context_root into target, honouring `items`."""
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        target.mkdir(parents=True)
        for mount in container.get("volumeMounts") or []:
            rel = os.path.relpath(mount["mountPath"], context_root)
            if rel.startswith(".."):
                continue
            for path, content in self._volume_files(pod, volumes[mount["name"]]).items():
                dest = target / rel / path
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(content)

    def _volume_files(self, pod: dict, volume: dict) -> dict[str, bytes]:
        """The files a kubelet would write for a configMap, secret or projected volume: {path: content}."""
        ns = pod["metadata"]["namespace"]
        sources = [volume] if "configMap" in volume or "secret" in volume else \
            volume.get("projected", {}).get("sources", [])
        out: dict[str, bytes] = {}
        for source in sources:
            if "configMap" in source:
                spec = source["configMap"]
                obj = self.api.request("GET", f"/api/v1/namespaces/{ns}/configmaps/{spec['name']}")
                files = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
                files |= {k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()}
            elif "secret" in source:
                spec = source["secret"]
                name = spec.get("secretName") or spec.get("name")
                obj = self.api.request("GET", f"/api/v1/namespaces/{ns}/secrets/{name}")
                files = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
            else:
                continue
            paths = {i["key"]: i["path"] for i in spec.get("items") or []} or {k: k for k in files}
            out |= {path: files[key] for key, path in paths.items()}
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    parser.add_argument("--node", default=NODE_NAME)
    parser.add_argument("--registry", default=os.environ.get("KENV_REGISTRY"))
    parser.add_argument("--logs-dir", default=None)
    parser.add_argument("--kaniko", default=None, help="Kaniko executor to run Kaniko build pods with "
                        "(default: $KENV_FAKELET_KANIKO; unset: buildah on the host)")
    args = parser.parse_args()
    fakelet = Fakelet(args.kubeconfig, args.node, args.registry, args.logs_dir, kaniko=args.kaniko).start()
    print(f"[fakelet] watching pods on {args.node}; build logs in {fakelet.logs_dir}", file=sys.stderr)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with contextlib.suppress(KeyboardInterrupt):
        done.wait()
    fakelet.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
