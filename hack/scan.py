"""A Kubernetes manifest scan (checkov) of what kenv deploys: the chart as rendered for production (issue 15) and
the build Job of each builder and of an incremental build, as the operator creates them with its defaults. Every
failed check must be answered in hack/scan-answers.yaml (README "Hardening" shows the same answers); an answer no
check needs any more fails too, so the list stays true.

    python hack/scan.py [--checkov PATH] [--keep DIR]

`make scan` installs checkov into .venv-scan (it pins dependencies of its own) and runs this. checkov is run with
--skip-download and a proxy that points nowhere, so it never reaches its vendor's API.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

HACK = Path(__file__).resolve().parent
ROOT = HACK.parent
sys.path.insert(0, str(HACK))
from procs import script_output  # noqa: E402

ANSWERS = HACK / "scan-answers.yaml"
# What a production install sets: its own namespace, the operator image pinned by digest, and build pods' egress
# limited to the addresses builds need (an example range).
CHART_VALUES = ["--namespace", "kenv-system", "--set", "destinationRepo=registry.example.com/kenv/environments",
                "--set", f"image.digest=sha256:{'0' * 64}", "--set", "networkPolicy.builds.enabled=true",
                "--set", "networkPolicy.builds.egress[0].cidr=10.0.0.0/8",
                "--set", "networkPolicy.builds.egress[0].ports={443,5000}"]


def render_chart(helm: Path, out: Path) -> None:
    rendered = subprocess.run([str(helm), "template", "kenv", str(ROOT / "charts/kenv"), *CHART_VALUES],
                              check=True, capture_output=True, text=True).stdout
    (out / "chart.yaml").write_text(rendered)


def render_build_jobs(out: Path) -> None:
    """Each builder's Job for a pip Environment, with the operator's default settings and a push Secret."""
    from kenv import builds
    from kenv.config import OperatorSettings
    from kenv.models import Builder, BuildSettings, spec_from_body
    from kenv.render import render_context

    settings = OperatorSettings(destination_repo="registry.example.com/kenv/environments",
                                build_namespace="kenv-system")
    context = render_context(spec_from_body({"pip": {"packages": ["scikit-learn==1.5.2"]}}))
    for builder in Builder:
        job = builds.build_job(builds.plan_build(context, settings), BuildSettings(builder=builder), settings,
                               requested_by="team/train", context_files=list(context.files),
                               has_docker_config=True, has_ca=False)
        job["metadata"]["name"] = f"build-{builder.value}"
        (out / f"build-job-{builder.value}.yaml").write_text(yaml.safe_dump(job))
    # An incremental build's Job (spec.build.incremental): the previous image's install step and the push step.
    from kenv import incremental

    settings = settings.model_copy(update={"operator_image": "registry.example.com/kenv/operator@sha256:" + "0" * 64})
    found = incremental.Increment(f"{settings.destination_repo}@sha256:{'1' * 64}", ("scikit-learn==1.5.2",))
    plan = incremental.plan_increment(builds.plan_build(context, settings), found)
    spec = spec_from_body({"pip": {"packages": ["scikit-learn==1.5.2"]}, "build": {"incremental": True}})
    job = incremental.increment_job(plan, found, spec, settings, requested_by="team/train",
                                    context_files=list(incremental.context_files(context)), has_docker_config=True,
                                    has_ca=False, package_cache=False)
    job["metadata"]["name"] = "build-incremental"
    (out / "build-job-incremental.yaml").write_text(yaml.safe_dump(job))


def failed_checks(checkov: str, directory: Path) -> list[tuple[str, str, str]]:
    """(check id, resource, file) of every failed check."""
    env = {**os.environ, "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": "",
           "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9", "no_proxy": ""}
    result = subprocess.run([checkov, "-d", str(directory), "--framework", "kubernetes", "--output", "json",
                             "--skip-download", "--quiet"], capture_output=True, text=True, env=env)
    if result.returncode not in (0, 1):  # 1: some check failed
        raise RuntimeError(f"checkov failed ({result.returncode}): {result.stderr[-2000:]}")
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = []
    for one in reports:
        for check in one.get("results", {}).get("failed_checks", []):
            failed.append((check["check_id"], check["resource"], Path(check["file_path"]).name))
        summary = one.get("summary", {})
        print(f"checkov: {summary.get('passed', 0)} passed, {summary.get('failed', 0)} failed "
              f"({summary.get('resource_count', '?')} resources)")
    return sorted(set(failed))


def judge(failed: list[tuple[str, str, str]], answers: dict) -> tuple[list[str], list[str]]:
    """The failures no answer covers, and the answers (check id and pattern) no failure needs."""
    used: set[tuple[str, str]] = set()
    unanswered = []
    for check, resource, file in failed:
        patterns = (answers.get(check) or {}).get("resources", [])
        hit = next((p for p in patterns if fnmatch.fnmatch(f"{file}:{resource}", p)), None)
        if hit is None:
            unanswered.append(f"{check} {file}:{resource}")
        else:
            used.add((check, hit))
    stale = [f"{check} {pattern}" for check, answer in answers.items() for pattern in answer.get("resources", [])
             if (check, pattern) not in used]
    return unanswered, stale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkov", default=str(ROOT / ".venv-scan/bin/checkov"))
    parser.add_argument("--keep", metavar="DIR", help="render into DIR and keep it")
    args = parser.parse_args()
    helm = Path(script_output(HACK / "build-binaries.sh")) / "helm"
    answers = yaml.safe_load(ANSWERS.read_text()) or {}
    with tempfile.TemporaryDirectory(prefix="kenv-scan-") as scratch:
        out = Path(args.keep or scratch)
        out.mkdir(parents=True, exist_ok=True)
        render_chart(helm, out)
        render_build_jobs(out)
        failed = failed_checks(args.checkov, out)
    for check, resource, file in failed:
        why = (answers.get(check) or {}).get("why", "").split(":")[0].strip()  # its heading
        print(f"  {check} {file}:{resource}: {why or 'NOT ANSWERED'}")
    unanswered, stale = judge(failed, answers)
    for item in unanswered:
        print(f"scan: failed and not answered in {ANSWERS.name}: {item}")
    for item in stale:
        print(f"scan: answered in {ANSWERS.name} but no longer failing (remove it): {item}")
    return 1 if unanswered or stale else 0


if __name__ == "__main__":
    sys.exit(main())
