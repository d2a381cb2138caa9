"""`make run`: the local cluster (control plane, registry, a real node), kenv installed by Helm with the operator
image built here, the sample Environment built to Ready by a Kaniko pod, and a training pod that runs in its
digest-pinned image. Exits once the training pod's log is shown (the cluster keeps running until
`hack/cluster down`); KENV_RUN_WAIT=1 stays in the foreground until Ctrl-C instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HACK = Path(__file__).resolve().parent
ROOT = HACK.parent
sys.path.insert(0, str(HACK))

import images  # noqa: E402
from localcluster import LOCAL_HOSTS, LocalCluster  # noqa: E402
from procs import ensure_no_proxy  # noqa: E402
from release import KenvRelease  # noqa: E402

CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def main() -> int:
    ensure_no_proxy(hosts=LOCAL_HOSTS)
    started = time.monotonic()
    step("local cluster: control plane, registry and a real node (hack/cluster up)")
    cluster = LocalCluster.attach()
    if not (cluster and cluster.healthy()):
        subprocess.run([str(HACK / "cluster"), "up"], check=True, stdout=subprocess.DEVNULL)
        cluster = LocalCluster.attach()
    assert cluster is not None
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "KENV_REGISTRY": cluster.registry}

    def kubectl(*args: str, stdin: str | None = None) -> str:
        result = subprocess.run([cluster.kubectl, *args], env=env, input=stdin, text=True, capture_output=True)
        if result.returncode != 0:
            raise SystemExit(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    print(cluster.exports())
    print(kubectl("get", "nodes", "-o", "wide"))
    step("images built here and pushed to the local registry (hack/images.py; cached by content)")
    for name, ref in images.build(["base", "kaniko", "operator"], cluster.registry).items():
        print(f"{name:9} {ref}")
    step("kenv installed by Helm (charts/kenv), the operator a pod of the image above")
    release = KenvRelease(cluster).install()
    print(kubectl("get", "pods", "-n", release.namespace, "-o", "wide"))
    step("the CA bundle builds trust (this machine reaches PyPI through a TLS proxy)")
    ca = kubectl("create", "configmap", "kenv-ca", "-n", "default", f"--from-file=ca.crt={CA_BUNDLE}",
                 "--dry-run=client", "-o", "yaml")
    kubectl("apply", "-f", "-", stdin=ca)
    step("sample Environment (examples/sample-environment.yaml), built by a Kaniko pod")
    manifest = (ROOT / "examples/sample-environment.yaml").read_text().replace("${KENV_REGISTRY}", cluster.registry)
    kubectl("apply", "-f", "-", stdin=manifest)
    kubectl("wait", "--for=jsonpath={.status.phase}=Ready", "env/sample", "-n", "default", "--timeout=900s")
    print(kubectl("get", "env", "-n", "default", "-o", "wide"))
    step("a training pod labelled kenv.dev/environment=sample runs in the digest-pinned image")
    kubectl("delete", "pod", "train", "-n", "default", "--ignore-not-found")
    kubectl("apply", "-f", str(ROOT / "examples/training-pod.yaml"))
    kubectl("wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/train", "-n", "default", "--timeout=300s")
    print(kubectl("get", "pod", "train", "-n", "default", "-o", "jsonpath={.spec.containers[0].image}{'\\n'}"))
    print("kubectl logs train:", kubectl("logs", "train", "-n", "default").strip())
    print(f"\nready in {time.monotonic() - started:.0f}s. The cluster runs until `hack/cluster down`. Try:\n"
          "  eval \"$(hack/cluster up)\"; kubectl get env -A; kenv logs sample -n default; "
          "kubectl logs -n kenv-system deploy/kenv")
    if os.environ.get("KENV_RUN_WAIT") == "1":
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
