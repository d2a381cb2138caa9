"""Load, scaled for CI: many Environments of distinct content against the build cap, and a burst of admissions.
bench/ runs the full-size versions (300 Environments, 50 pods/s for 60 s) and prints the figures."""

from __future__ import annotations

import threading
import time

import pytest

from kenvfixtures import GROUP_PATH, build_jobs, create_env, wait_for

pytestmark = pytest.mark.usefixtures("operator")
ENVIRONMENTS = 12
CAP = 2  # the session operator runs with KENV_MAX_PARALLEL_BUILDS=2


def active_build_jobs(kube) -> list[str]:
    return [j["metadata"]["name"] for j in build_jobs(kube) if not any(
        c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in j["status"].get("conditions", []))]


def test_build_cap_holds_and_every_environment_gets_its_own_image(kube, cluster, namespace, base_image):
    samples: list[int] = []
    over: list[list[str]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            active = active_build_jobs(kube)
            samples.append(len(active))
            if len(active) > CAP:
                over.append(active)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        for i in range(ENVIRONMENTS):
            create_env(kube, namespace, f"load-{i}", {
                "docker": {"dockerfile": f"FROM {base_image}\nLABEL kenv.load={namespace}-{i}"},
                "python": {"userManagedDependencies": True}})
        phases = {}

        def all_ready() -> bool:
            items = kube.request("GET", f"{GROUP_PATH}/namespaces/{namespace}/environments")["items"]
            phases.update({e["metadata"]["name"]: (e.get("status") or {}).get("phase") for e in items})
            return len(items) == ENVIRONMENTS and all(p == "Ready" for p in phases.values())
        wait_for(all_ready, 900, f"{ENVIRONMENTS} Environments Ready", interval=1)
    finally:
        stop.set()
        sampler.join()
    print(f"\nLOAD {ENVIRONMENTS} environments, cap {CAP}: max active build Jobs sampled {max(samples)} "
          f"over {len(samples)} samples")
    assert max(samples) <= CAP, over[:3]
    assert max(samples) >= 1  # the sampler did see builds running
    items = kube.request("GET", f"{GROUP_PATH}/namespaces/{namespace}/environments")["items"]
    hashes = {e["status"]["hash"] for e in items}
    digests = {e["status"]["digest"] for e in items}
    assert len(hashes) == len(digests) == ENVIRONMENTS  # zero lost or crossed updates
    for content_hash in hashes:
        assert len(build_jobs(kube, content_hash)) == 1  # one Job per content


def test_admission_burst_has_no_failures(kube, namespace, base_image):
    create_env(kube, namespace, "burst", {"docker": {"baseImage": base_image},
                                          "python": {"userManagedDependencies": True}})
    wait_for(lambda: (kube.request("GET", f"{GROUP_PATH}/namespaces/{namespace}/environments/burst")
                      .get("status") or {}).get("phase") == "Ready", 300, "burst env Ready")
    latencies: list[float] = []
    failures: list[str] = []

    def admit(i: int) -> None:
        body = {"metadata": {"name": f"p{i}", "labels": {"kenv.dev/environment": "burst"}},
                "spec": {"schedulingGates": [{"name": "test.kenv.dev/hold"}],
                         "containers": [{"name": "c", "image": "x", "command": ["true"]}]}}
        started = time.monotonic()
        try:
            created = kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", body)
            if "@sha256:" not in created["spec"]["containers"][0]["image"]:
                failures.append(f"p{i} not injected")
        except Exception as error:  # noqa: BLE001 - every failure is counted and reported
            failures.append(f"p{i}: {error}")
        latencies.append(time.monotonic() - started)

    threads = [threading.Thread(target=admit, args=(i,)) for i in range(100)]
    for thread in threads:
        thread.start()
        time.sleep(0.02)  # 50 pods/s
    for thread in threads:
        thread.join()
    latencies.sort()
    print(f"\nADMISSION 100 pods at 50/s: p50 {latencies[49] * 1000:.0f} ms, p99 {latencies[98] * 1000:.0f} ms")
    assert not failures, failures[:5]
