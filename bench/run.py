"""kenv benchmarks; print their figures (never asserted as timings in tests).

  python bench/run.py [render]          # rendering + hashing, as a ratio to yaml.safe_dump of the same spec

The others start their own local cluster (a real node) and kenv by Helm (bench/stack.py):
  python bench/pods.py [--pods 10]                   # pod start latency on the local node
  python bench/webhook.py [--rate 20 --seconds 60]   # pod CREATE with vs. without the webhook, p50/p99
  python bench/overhead.py                           # Environment to Ready vs. a plain Kaniko Job; one-package edit
  python bench/build.py [--index pypi|local]         # the iteration loop: edit -> pod running, pip, uv, conda, plain
  python bench/conda.py [--rounds 2] [--host-only]    # conda vs pip build of the same packages; solve time
  python bench/load.py [--envs 300 --cap 4]          # build cap, one Job per content, lost updates
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "hack"), str(ROOT / "operator")]


def bench_render(rounds: int = 2000) -> None:
    import yaml

    from kenv.models import EnvironmentSpec
    from kenv.render import render_context

    raw = {"docker": {"baseImage": "python:3.11"}, "pip": {"requirements": "numpy==2.1\npandas\n" * 20},
           "conda": {"channels": ["conda-forge"], "packages": ["cudatoolkit=11.8"] * 10}, "python": {"version": "3.11"}}
    spec = EnvironmentSpec.model_validate(raw)

    def timed(fn) -> float:
        started = time.perf_counter()
        for _ in range(rounds):
            fn()
        return (time.perf_counter() - started) / rounds

    baseline = timed(lambda: yaml.safe_dump(raw))
    render = timed(lambda: render_context(spec).hash)
    print(f"render+hash: {render * 1e6:.0f} µs per spec; {render / baseline:.2f}x yaml.safe_dump of the spec")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", nargs="?", choices=["render"], default="render")
    parser.parse_args()
    bench_render()
    return 0


if __name__ == "__main__":
    sys.exit(main())
