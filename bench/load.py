"""The issue's load test at full size: many Environments of distinct content against the build cap.

    python bench/load.py [--envs 300] [--cap 4] [--timeout 7200]

Starts its own stack (bench/stack.py) with the operator's KENV_MAX_PARALLEL_BUILDS=--cap, creates --envs
Environments at once, each FROM the base image + one LABEL (distinct content, userManagedDependencies: a real
Kaniko build pod and push each, no pip), samples the active build Jobs every 0.5 s, and waits until all are Ready.
Prints: max active build Jobs (must be ≤ cap), time to all Ready, build Jobs per content (must be 1), and lost
updates (distinct digests must equal --envs). Exits 1 if an invariant fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "hack")]
from stack import Stack  # noqa: E402


def check(ok: bool) -> str:
    return "ok" if ok else "FAILED"


def run(envs: int, cap: int, timeout: float) -> int:
    stack = Stack(max_parallel_builds=cap).start()
    try:
        print(f"load: {envs} Environments of distinct content (FROM base + one LABEL), operator cap {cap}, "
              f"Kaniko build pods on the local node")
        result = stack.load(envs, timeout=timeout)
    finally:
        stack.stop()
    failures = [result["max_active"] > cap, result["jobs_per_content_max"] != 1,
                result["jobs_per_content_min"] != 1, result["contents"] != envs, result["lost"] != 0]
    print(f"  max active build Jobs: {result['max_active']} over {result['samples']} samples every 0.5 s "
          f"(must be ≤ {cap}: {check(result['max_active'] <= cap)})")
    print(f"  all {envs} Ready in {result['seconds']:.0f} s ({result['seconds'] / envs:.2f} s per Environment)")
    print(f"  build Jobs: {result['jobs']} for {result['contents']} contents; per content min "
          f"{result['jobs_per_content_min']} max {result['jobs_per_content_max']} (must be 1: "
          f"{check(result['jobs_per_content_min'] == result['jobs_per_content_max'] == 1)})")
    print(f"  distinct digests: {result['digests']} of {envs}; lost updates: {result['lost']} "
          f"(must be 0: {check(result['lost'] == 0 and result['contents'] == envs)})")
    return 1 if any(failures) else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", type=int, default=300)
    parser.add_argument("--cap", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=7200, help="give up (exit 1) after this many seconds")
    args = parser.parse_args()
    try:
        return run(args.envs, args.cap, args.timeout)
    except (RuntimeError, TimeoutError) as error:
        print(f"load: FAILED: {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
