"""`kenv logs`: the build log of an Environment's latest build Job."""

from __future__ import annotations

import sys
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from kenv import jobstate, kube


async def show_logs(name: str, namespace: str | None, cluster: bool, follow: bool) -> int:
    try:
        body = await kube.read_environment(name, namespace, cluster)
        job = (body.get("status") or {}).get("buildJob")
        if not job:
            print(f"kenv: {name} has no build yet (phase {(body.get('status') or {}).get('phase')})",
                  file=sys.stderr)
            return 1
        pods = await kube.job_pods(job["namespace"], job["name"])
        if not pods:
            print(f"kenv: build Job {job['namespace']}/{job['name']} has no pods left", file=sys.stderr)
            return 1
        pod = pods[-1]["metadata"]["name"]
        core = await kube.core()
        try:
            if follow:
                response: Any = await core.read_namespaced_pod_log(pod, job["namespace"], follow=True,
                                                                   _preload_content=False)
                async for line in response.content:
                    sys.stdout.write(line.decode(errors="replace"))
            else:
                sys.stdout.write(await core.read_namespaced_pod_log(pod, job["namespace"]))
        except ApiException as error:
            state = jobstate.terminated_state(pods[-1]) or {}
            print(f"kenv: the cluster could not serve the log of {job['namespace']}/{pod} "
                  f"(HTTP {error.status}); its termination message:", file=sys.stderr)
            print(state.get("message", "(none)"))
        return 0
    except ApiException as error:
        print(f"kenv: {error.status} {error.reason}: check the name and namespace", file=sys.stderr)
        return 1
    finally:
        await kube.close()
