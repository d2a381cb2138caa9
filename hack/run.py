"""`make run`: local control plane + registry + fakelet, the base image, the CRDs, the operator, and the sample
Environment built to Ready. Then a labelled pod shows the injection. Stays in the foreground until Ctrl-C
(KENV_RUN_ONCE=1: exit as soon as the sample is Ready); the cluster keeps running until `hack/cluster down`.
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

from localcluster import LocalCluster, ensure_no_proxy  # noqa: E402
from operatorproc import BUILD_NAMESPACE, OperatorProcess  # noqa: E402

CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def main() -> int:
    ensure_no_proxy()
    started = time.monotonic()
    step("local control plane, registry and fakelet (hack/cluster up --fakelet)")
    cluster = LocalCluster.attach()
    if not (cluster and cluster.healthy()):
        # The fakelet runs build pods with the real Kaniko executor (built once from the Go module proxy).
        kaniko = subprocess.run([str(HACK / "build-kaniko.sh")], check=True, capture_output=True, text=True)
        os.environ["KENV_FAKELET_KANIKO"] = kaniko.stdout.strip().splitlines()[-1]
        subprocess.run([str(HACK / "cluster"), "up", "--fakelet"], check=True, stdout=subprocess.DEVNULL)
        cluster = LocalCluster.attach()
    assert cluster is not None
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "KENV_REGISTRY": cluster.registry}

    def kubectl(*args: str, stdin: str | None = None) -> str:
        result = subprocess.run([cluster.kubectl, *args], env=env, input=stdin, text=True, capture_output=True)
        if result.returncode != 0:
            raise SystemExit(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    print(cluster.exports())
    step("base image (debootstrap + buildah, pushed to the local registry)")
    subprocess.run([str(HACK / "base-image.sh")], env=env, check=True)
    step("CRDs, build namespace and the CA bundle ConfigMap")
    kubectl("apply", "-f", str(ROOT / "crds"))
    kubectl("wait", "--for=condition=Established", "crd/environments.kenv.dev", "--timeout=60s")
    kubectl("apply", "-f", "-", stdin=f"{{'apiVersion': 'v1', 'kind': 'Namespace', "
                                      f"'metadata': {{'name': '{BUILD_NAMESPACE}'}}}}")
    ca = kubectl("create", "configmap", "kenv-ca", "-n", "default", f"--from-file=ca.crt={CA_BUNDLE}",
                 "--dry-run=client", "-o", "yaml")
    kubectl("apply", "-f", "-", stdin=ca)
    step("operator (kenv operator)")
    log_path = Path(cluster.state_dir) / "operator.log"
    operator = OperatorProcess(cluster.kubeconfig, cluster.registry, log_path).start()
    print(f"operator log: {log_path}\nmetrics: {operator.metrics_url}")
    try:
        step("sample Environment (examples/sample-environment.yaml)")
        manifest = (ROOT / "examples/sample-environment.yaml").read_text().replace("${KENV_REGISTRY}",
                                                                                   cluster.registry)
        kubectl("apply", "-f", "-", stdin=manifest)
        kubectl("wait", "--for=jsonpath={.status.phase}=Ready", "env/sample", "-n", "default", "--timeout=900s")
        print(kubectl("get", "env", "-n", "default", "-o", "wide"))
        step("a training pod labelled kenv.dev/environment=sample gets the digest-pinned image")
        kubectl("delete", "pod", "train", "-n", "default", "--ignore-not-found")
        kubectl("apply", "-f", str(ROOT / "examples/training-pod.yaml"))
        print(kubectl("get", "pod", "train", "-n", "default", "-o",
                      "jsonpath={.spec.containers[0].image}{'\\n'}{.metadata.annotations}{'\\n'}"))
        print(f"ready in {time.monotonic() - started:.0f}s")
        if os.environ.get("KENV_RUN_ONCE") == "1":
            return 0
        print("\nThe operator runs until Ctrl-C; the cluster until `hack/cluster down`. Try:\n"
              "  eval \"$(hack/cluster up)\"; kubectl get env -A; kenv logs sample -n default")
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0
    finally:
        operator.stop()


if __name__ == "__main__":
    sys.exit(main())
