"""Bootstrap scripts in real pods: the webhook wraps the command, the kubelet runs the wrapper in the image.

The image is the Debian base, whose /bin/sh is dash: a script using bash's `[[ … ]]` must run with bash (it used
to run with sh, print "[[: not found", skip its block and let the pod succeed), and a failing script must fail
the pod with the script's exit code, its last lines in the container's termination message.
"""

from __future__ import annotations

import pytest

from kenvfixtures import create_env, exit_code, run_pod, wait_phase

pytestmark = pytest.mark.usefixtures("operator")

# An Azure ML guide's per-node setup, as users paste it: no shebang, bash's [[ … ]].
GUIDE_SCRIPT = """\
if [[ "${LOCAL_RANK:-0}" == "0" ]]; then
  echo "preparing the node"
  mkdir -p /tmp/data && echo ready > /tmp/data/READY
fi
"""

FAILING_SCRIPT = """\
echo "downloading the dataset"
echo "error: dataset server unreachable" >&2
(exit 3)
echo "never reached"
"""

TRAIN = "import os; print(os.path.basename(os.path.realpath('/bin/sh'))); print(open('/tmp/data/READY').read().strip())"


def ready_environment(kube, namespace: str, name: str, base_image: str, script: str) -> None:
    create_env(kube, namespace, name, {
        "docker": {"baseImage": base_image},
        "python": {"userManagedDependencies": True, "interpreterPath": "/usr/bin/python3"},
        "bootstrap": {"script": script}})
    env = wait_phase(kube, namespace, name, {"Ready", "Failed"}, timeout=300)
    assert env["status"]["phase"] == "Ready", env["status"]


def test_guide_script_runs_with_bash_and_a_failing_script_fails_the_pod(kube, namespace, base_image):
    ready_environment(kube, namespace, "guide", base_image, GUIDE_SCRIPT)
    ready_environment(kube, namespace, "broken", base_image, FAILING_SCRIPT)

    pod, log = run_pod(kube, namespace, "guide", {"containers": [
        {"name": "train", "image": "placeholder", "command": ["python3", "-c", TRAIN]}]},
        labels={"kenv.dev/environment": "guide"})
    assert pod["spec"]["containers"][0]["command"][:2] == ["/bin/sh", "-c"]  # wrapped by the webhook
    assert exit_code(pod) == 0 and pod["status"]["phase"] == "Succeeded", log
    # the script's block ran (with bash: the image's /bin/sh is dash) and the training command saw its effect
    assert log.splitlines() == ["preparing the node", "dash", "ready"]

    pod, log = run_pod(kube, namespace, "broken", {"containers": [
        {"name": "train", "image": "placeholder", "command": ["python3", "-c", "print('trained')"]}]},
        labels={"kenv.dev/environment": "broken"})
    assert pod["status"]["phase"] == "Failed", log
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 3, (terminated, log)
    assert terminated["message"].splitlines() == [
        "kenv: bootstrap script failed with exit code 3", "downloading the dataset",
        "error: dataset server unreachable"]
    # the log holds the script's output and why it stopped; the rest of the script and the command never ran
    # (stdout and stderr are two streams for the kubelet: their relative order is not asserted)
    assert sorted(log.splitlines()) == sorted([
        "downloading the dataset", "error: dataset server unreachable",
        "kenv: bootstrap script failed with exit code 3"])
