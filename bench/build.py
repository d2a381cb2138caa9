"""The iteration loop: from editing an Environment to a pod running in the new image, with real Kaniko pods.

    python bench/build.py [--index pypi|local] [--skip conda]

Starts its own stack (bench/stack.py: a fresh registry and package cache, a real node, kenv by Helm) and in one
run, interleaved step by step:
  pip    an Environment of 10 pinned packages (PACKAGES; pip installer): the first build, one package added,
         one version changed, one variable changed;
  plain  the same requirements.txt at each step, built by a plain Dockerfile (FROM the base, COPY requirements.txt,
         RUN pip install -r) with the same Kaniko executor and flags, a cache repository of its own, no package
         cache: what a hand-written Dockerfile gets;
  uv     the pip Environment's steps with `pip.installer: uv`;
  incremental  the pip Environment's steps with `build.incremental: true`: the added package is installed into the
         first version's image by a pod running it and pushed as layers on top (incremental.py), and the changed
         version into the second's the same way (pip replaces the package; its old files become whiteouts);
  uv-incremental  the same with `pip.installer: uv` (uv, pip-installed beside the image, installs the line);
  conda  a conda + pip Environment (python 3.11 and five packages from the local channel, hack/condachannel.py,
         served on this host; three pip packages): the first build, a conda package added, a pip package added;
         beside it the same steps with `build.incremental: true` (the conda package solved and installed into the
         last image by py-rattler, incremental.py).
Each step is timed from the POST or PATCH to Ready (plain: to the Job's Complete) and then to a pod in the new
image Running (the webhook injects it; plain: the pod names the pushed digest). Per build it prints which steps
Kaniko reused from the cache repository and which it built ("Using caching version of cmd" / "No cached layer
found" in the build pod's log: the proof, not the timing), and what the installers fetched (pip: "Downloading"
vs "Using cached"; uv: "Prepared N packages" = downloaded and unpacked, the rest came from its cache).

--index local serves the pip packages (and their dependencies, downloaded once from PyPI) from an index on this
host that sends PyPI's Cache-Control header (hack/pypiindex.py): this machine's TLS proxy drops that header, and
without it pip's HTTP cache keeps nothing (uv still goes to PyPI: a plain-http index needs --trusted-host, which
uv does not read). --index pypi (default) goes through the proxy, as a build here does.
Figures, never verdicts; the goal it prints (a one-package change Ready in <= 35% of the first build's time) is
checked by reading them.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "hack")]
import condachannel  # noqa: E402
import pypiindex  # noqa: E402
from condaserver import ChannelServer  # noqa: E402
from kenv.logs import kaniko_steps  # noqa: E402
from nodeconfig import NODE_IP  # noqa: E402
from overhead import CA_FILE, job_pod, plain_kaniko_job  # noqa: E402
from stack import GROUP_PATH, Stack  # noqa: E402

PACKAGES = ["numpy==2.1.3", "pandas==2.2.3", "requests==2.32.3", "PyYAML==6.0.2", "tqdm==4.67.1", "click==8.1.7",
            "rich==13.9.4", "packaging==24.2", "attrs==24.2.0", "six==1.16.0"]
ADDED = "tabulate==0.9.0"
CHANGED = ("requests==2.32.3", "requests==2.32.2")
IMPORTS = "numpy, pandas, requests, yaml, tqdm, click, rich, packaging, attr, six"
CONDA_PACKAGES = ["python=3.11", "requests", "attrs", "packaging", "six", "tqdm"]
CONDA_ADDED = "kenv-pyhello"
CONDA_PIP = ["PyYAML==6.0.2", "click==8.1.7", "tabulate==0.9.0"]
CONDA_PIP_ADDED = "rich==13.9.4"
CONDA_IMPORTS = "requests, yaml, click, tabulate"
GOAL = 0.35
CA = {"name": "kenv-ca", "key": "ca.crt"}


@dataclass
class Step:
    label: str
    ready: float  # edit -> Ready (plain: POST -> Complete)
    running: float  # Ready -> a pod in the new image Running
    log: str  # the build pod's log ("" when nothing was built)
    containers: str = ""  # an incremental build's timeline (job_log)

    @property
    def total(self) -> float:
        return self.ready + self.running

    def fetched(self) -> str:
        if not self.log:
            return "no build"
        if prepared := re.search(r"Prepared (\d+) packages?", self.log):  # uv
            installed = re.search(r"Installed (\d+) packages?", self.log)
            return f"uv prepared {prepared.group(1)} of {installed.group(1) if installed else '?'}"
        downloads, cached = self.log.count("Downloading "), self.log.count("Using cached ")
        return f"pip downloaded {downloads}, cached {cached}" if downloads or cached else "no pip step"

    def steps(self) -> str:
        steps = kaniko_steps(self.log)
        return f"{sum(reused for _, reused in steps)} of {len(steps)} reused" if steps else "-"


def requirements(packages: list[str], source: list[str]) -> str:
    return "\n".join([*source, *packages]) + "\n"


class Loop:
    """Edits of one Environment, each timed to Ready and to a pod running in its image."""

    def __init__(self, stack: Stack, name: str, imports: str) -> None:
        self.stack, self.name, self.imports = stack, name, imports
        self.path = f"{GROUP_PATH}/namespaces/{stack.namespace}/environments/{name}"
        self.steps: list[Step] = []

    def apply(self, label: str, spec: dict[str, Any], create: bool = False) -> Step:
        before = {job["metadata"]["name"] for job in self.stack.build_jobs()}
        started, edited = time.monotonic(), time.time()
        if create:
            self.stack.create_environment(self.name, spec)
        else:
            self.stack.kube.request("PATCH", self.path, {"spec": spec}, content_type="application/merge-patch+json")
        env = self.wait_current()
        ready = time.monotonic() - started
        running = pod_running(self.stack, self.name, {"kenv.dev/environment": self.name}, "placeholder",
                              self.imports)
        job = env["status"].get("buildJob") or {}
        log, containers = job_log(self.stack, job["namespace"], job["name"], edited) \
            if job.get("name") not in before | {None} else ("", "")
        step = Step(label, ready, running, log, containers)
        self.steps.append(step)
        return step

    def wait_current(self, timeout: float = 1800) -> dict[str, Any]:
        """The Environment once Ready for its latest generation."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            env = self.stack.kube.request("GET", self.path)
            status = env.get("status") or {}
            if status.get("observedGeneration") == env["metadata"]["generation"]:
                if status.get("phase") == "Ready":
                    return dict(env)
                if status.get("phase") == "Failed":
                    raise RuntimeError(f"{self.name} Failed: {status.get('conditions')}")
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not Ready after {timeout:.0f} s")


def job_log(stack: Stack, namespace: str, job: str, edited: float) -> tuple[str, str]:
    """The build pod's log (an incremental build's: each container's in turn) and, for an incremental build, its
    timeline from the edit (`edited`, wall clock)."""
    pod = job_pod(stack, namespace, job)
    name, spec = pod["metadata"]["name"], pod["spec"]
    if not spec.get("initContainers"):
        return stack.pod_log(namespace, name), ""
    log = "".join(str(stack.kube.text(f"/api/v1/namespaces/{namespace}/pods/{name}/log?container={c['name']}"))
                  for c in [*spec["initContainers"], *spec["containers"]])
    body = stack.kube.request("GET", f"/apis/batch/v1/namespaces/{namespace}/jobs/{job}")
    return log, timeline(body, pod, edited)


def timeline(job: dict[str, Any], pod: dict[str, Any], edited: float) -> str:
    """`job 0.4, scheduled 1, tools 2-2, install 3-4, push 5-6, complete 7`: seconds from the edit to each point
    (the API's timestamps are whole seconds)."""
    def at(stamp: str) -> str:
        return f"{datetime.fromisoformat(stamp.replace('Z', '+00:00')).timestamp() - edited:.0f}"
    points = [f"job {at(job['metadata']['creationTimestamp'])}"]
    points += [f"scheduled {at(c['lastTransitionTime'])}" for c in pod["status"].get("conditions", [])
               if c["type"] == "PodScheduled"]
    statuses = [*pod["status"].get("initContainerStatuses", []), *pod["status"].get("containerStatuses", [])]
    points += [f"{s['name']} {at(s['state']['terminated']['startedAt'])}-{at(s['state']['terminated']['finishedAt'])}"
               for s in statuses if "terminated" in s.get("state", {})]
    if job["status"].get("completionTime"):
        points.append(f"complete {at(job['status']['completionTime'])}")
    return ", ".join(points)


def pod_running(stack: Stack, name: str, labels: dict[str, str], image: str, imports: str) -> float:
    """Seconds from the pod's POST to Running (or done); then checks, untimed, that the imports succeeded."""
    namespace = stack.namespace
    pod_name = f"{name}-{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    created = stack.kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", {
        "metadata": {"name": pod_name, "labels": labels}, "spec": {"restartPolicy": "Never", "containers": [
            {"name": "train", "image": image, "command": ["python3", "-c", f"import {imports}"]}]}})
    if created["spec"].get("schedulingGates"):
        print(f"    (pod {pod_name} was admitted gated: the webhook had not seen its Environment Ready yet)")
    seconds = None
    while True:
        phase = stack.kube.request("GET", f"/api/v1/namespaces/{namespace}/pods/{pod_name}")["status"].get("phase")
        if seconds is None and phase in ("Running", "Succeeded", "Failed"):
            seconds = time.monotonic() - started
        if phase in ("Succeeded", "Failed"):
            break
        time.sleep(0.1)
    if phase != "Succeeded":
        log = stack.pod_log(namespace, pod_name)
        raise RuntimeError(f"pod {pod_name} in {name}'s image failed: {log[-2000:]}")
    stack.kube.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{pod_name}")
    assert seconds is not None  # set when the phase first left Pending, at the latest with Succeeded
    return seconds


class Plain:
    """The same requirements built by a hand-written Dockerfile with the same Kaniko, its own cache repository."""

    def __init__(self, stack: Stack, ca: str) -> None:
        self.stack, self.ca = stack, ca
        self.steps: list[Step] = []

    def apply(self, label: str, requirements_txt: str) -> Step:
        dockerfile = (f"FROM {self.stack.base_image}\nCOPY kenv-ca.crt /etc/kenv-ca.crt\n"
                      "ARG PIP_CERT=/etc/kenv-ca.crt\nARG PIP_BREAK_SYSTEM_PACKAGES=1\n"
                      "COPY requirements.txt /tmp/requirements.txt\n"
                      "RUN python3 -m pip install -r /tmp/requirements.txt\n")
        files = {"Dockerfile": dockerfile, "requirements.txt": requirements_txt, "kenv-ca.crt": self.ca}
        ready, pod = plain_kaniko_job(self.stack, files, f"step-{len(self.steps)}", cache="plain-cache")
        digest = pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
        image = f"{self.stack.cluster.registry}/bench/plain@{digest}"
        running = pod_running(self.stack, "plain", {}, image, IMPORTS)
        log = self.stack.pod_log(self.stack.namespace, pod["metadata"]["name"])
        step = Step(label, ready, running, log)
        self.steps.append(step)
        return step


def report(title: str, steps: list[Step]) -> None:
    first = steps[0].total
    print(f"\n{title}")
    print(f"  {'step':<28}{'to Ready':>9}{'to pod':>8}{'total':>8}{'/first':>8}  {'Kaniko steps':<15} fetched")
    for step in steps:
        print(f"  {step.label:<28}{step.ready:>8.1f}s{step.running:>7.1f}s{step.total:>7.1f}s"
              f"{step.total / first:>8.2f}  {step.steps():<15} {step.fetched()}"
              f"{f' ({step.containers})' if step.containers else ''}")


def run(args: argparse.Namespace) -> int:
    stack = Stack(max_parallel_builds=4).start()
    try:
        ca = CA_FILE.read_text()
        stack.kube.request("POST", f"/api/v1/namespaces/{stack.namespace}/configmaps",
                           {"metadata": {"name": CA["name"]}, "data": {"ca.crt": ca}})
        source: list[str] = []
        index = None
        if args.index == "local":
            root = pypiindex.build(stack.state / "pypi-index",
                                   [*PACKAGES, ADDED, CHANGED[1], *CONDA_PIP, CONDA_PIP_ADDED], dependencies=True)
            index = ChannelServer(root, host=NODE_IP, cache_control=pypiindex.PYPI_FILE_CACHE_CONTROL).start()
            source = [f"--index-url {index.url}/simple", f"--trusted-host {NODE_IP}:{index.port}"]
        print(f"build: Kaniko pods ({stack.operator.images['kaniko']}); packages from "
              f"{index.url if index else 'PyPI through the proxy'}; a fresh registry and package cache")
        ready, _ = plain_kaniko_job(stack, {"Dockerfile": f"FROM {stack.base_image}\nRUN true\n", "kenv-ca.crt": ca},
                                    "warmup")
        print(f"warm-up: a plain Kaniko Job of FROM base + RUN true (image pulls), not counted: {ready:.1f} s")

        def pip_spec(packages: list[str], installer: str, variables: dict[str, str] | None = None,
                     incremental: bool = False) -> dict:
            # uv refuses --trusted-host, which a plain-http index needs: uv goes to PyPI (it caches by content)
            where = [] if installer == "uv" else source
            # --prefer-binary changes nothing here (every package has a wheel) but the content: the incremental
            # Environment must build its first version itself, not find the pip loop's image (uv does not read
            # the option: a comment makes its content its own)
            options = (["# the incremental loop's"] if installer == "uv" else ["--prefer-binary"]) if incremental \
                else []
            return {"docker": {"baseImage": stack.base_image}, "build": {"caBundle": CA, "incremental": incremental},
                    "pip": {"installer": installer, "requirements": requirements(packages, [*where, *options])},
                    "environmentVariables": variables or {}}

        added = [*PACKAGES, ADDED]
        changed = [CHANGED[1] if p == CHANGED[0] else p for p in added]
        edits = [("first build (10 packages)", PACKAGES, True), (f"+ {ADDED}", added, False),
                 (f"{CHANGED[0]} -> {CHANGED[1].split('==')[1]}", changed, False)]
        pip = Loop(stack, "pip", IMPORTS)
        skip = set(args.skip.split(","))
        others: dict[str, Loop | Plain] = {"plain": Plain(stack, ca), "uv": Loop(stack, "uv", IMPORTS),
                                           "incremental": Loop(stack, "incremental", IMPORTS),
                                           "uv-incremental": Loop(stack, "uv-incremental", IMPORTS)}
        others = {name: loop for name, loop in others.items() if name not in skip}
        for label, packages, create in edits:
            pip.apply(label, pip_spec(packages, "pip"), create)
            for name, loop in others.items():
                if isinstance(loop, Plain):
                    loop.apply(label, requirements(packages, source))
                else:
                    loop.apply(label, pip_spec(packages, "uv" if name.startswith("uv") else "pip",
                                               incremental=name.endswith("incremental")), create)
        step = pip.apply("variable changed", pip_spec(changed, "pip", {"KENV_BENCH_ROUND": "2"}))
        if step.log:
            raise RuntimeError("a variable change started a build")
        titles = {"pip": "pip (kenv, pip installer)",
                  "plain": "plain Dockerfile, same Kaniko, own cache repository, no package cache",
                  "uv": "uv (kenv, pip.installer uv)",
                  "incremental": "incremental (kenv, build.incremental: an added or changed line is installed into "
                                 "the last image)",
                  "uv-incremental": "uv incremental (kenv, pip.installer uv and build.incremental: uv installs the "
                                    "line into the last image)"}
        loops: dict[str, Loop | Plain] = {"pip": pip, **others}
        for name, loop in loops.items():
            report(titles[name], loop.steps)
        if "conda" not in skip:
            conda_loop(stack, source)
        for name, loop in loops.items():
            ratio = loop.steps[1].total / loop.steps[0].total
            print(f"{name}: one package added -> pod running in {ratio:.2f} of the first build's time "
                  f"(goal <= {GOAL}: {'met' if ratio <= GOAL else 'missed'})")
        if "uv" in loops:
            uv = loops["uv"]
            print(f"uv vs pip, first build to pod running: {uv.steps[0].total / pip.steps[0].total:.2f}; one "
                  f"package added: {uv.steps[1].total / pip.steps[1].total:.2f}")
        if index:
            index.stop()
    finally:
        stack.stop()
    return 0


def conda_loop(stack: Stack, source: list[str]) -> None:
    """The conda + pip steps, interleaved: an Environment with build.incremental (its requirements add
    --prefer-binary, so its first version is a build of its own), and one built in full each time."""
    with ChannelServer(condachannel.build(), NODE_IP) as channel:
        def spec(conda: list[str], pip: list[str], incremental: bool) -> dict:
            options = ["--prefer-binary"] if incremental else []
            return {"docker": {"baseImage": stack.base_image}, "build": {"caBundle": CA, "incremental": incremental},
                    "conda": {"channels": [channel.url, "nodefaults"], "packages": conda},
                    "pip": {"requirements": requirements(pip, [*source, *options])}}
        # The incremental Environment goes first: its first build runs the conda stage, which the other's reuses.
        loops = {True: Loop(stack, "conda-inc", CONDA_IMPORTS), False: Loop(stack, "conda", CONDA_IMPORTS)}
        edits = [("first build (conda + pip)", CONDA_PACKAGES, CONDA_PIP, True),
                 (f"+ conda {CONDA_ADDED}", [*CONDA_PACKAGES, CONDA_ADDED], CONDA_PIP, False),
                 (f"+ pip {CONDA_PIP_ADDED}", [*CONDA_PACKAGES, CONDA_ADDED], [*CONDA_PIP, CONDA_PIP_ADDED], False)]
        for label, conda, pip, create in edits:
            for incremental, loop in loops.items():
                loop.apply(label, spec(conda, pip, incremental), create)
        for incremental, loop in loops.items():
            kind = "build.incremental: the conda change solved into the last image by py-rattler" if incremental \
                else "full builds"
            report(f"conda + pip (kenv, {kind}; conda from {channel.url})", loop.steps)
        for incremental, loop in loops.items():
            ratio = loop.steps[1].total / loop.steps[0].total
            print(f"conda{' incremental' if incremental else ''}: one conda package added -> pod running in "
                  f"{ratio:.2f} of the first build's time (goal <= {GOAL}: {'met' if ratio <= GOAL else 'missed'})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", choices=("pypi", "local"), default="pypi",
                        help="where pip packages come from (see above)")
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: conda, plain, uv, "
                        "incremental, uv-incremental")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
