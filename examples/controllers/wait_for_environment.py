"""Wait until an Environment's image for its current spec is built, then create a workload: the status contract
kenv offers other controllers (README, "For controller authors").

    python wait_for_environment.py NAME [-n NAMESPACE] [--timeout 600] [--create workload.yaml]

Prints the digest-pinned image on stdout and exits 0; exits 1 if the build of the current spec failed (the
message on stderr), 2 on timeout. --create then creates the objects in a manifest (built-in kinds such as a
Job; a custom resource such as a PyTorchJob needs CustomObjectsApi) in the namespace. Only kubernetes_asyncio,
which kenv itself uses.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import yaml
from kubernetes_asyncio import client, config, utils, watch

GROUP, VERSION, PLURAL = "kenv.dev", "v1alpha1", "environments"


def verdict(env: dict[str, Any]) -> tuple[str, str] | None:
    """("built", image) or ("failed", message) once the status speaks for the current spec, else None.

    A status speaks for the current spec when its observedGeneration equals metadata.generation: until then it
    describes an older spec. Built=True means status.image holds this spec's image; Ready=True alone may mean an
    earlier version still serves (reason PreviousVersionServing) while this one builds."""
    generation = env["metadata"].get("generation")
    status = env.get("status") or {}
    built = next((c for c in status.get("conditions") or [] if c.get("type") == "Built"), None)
    if built is None or built.get("observedGeneration") != generation or status.get("observedGeneration") != generation:
        return None
    if built["status"] == "True" and status.get("image"):
        return "built", status["image"]
    if built["status"] == "False":
        return "failed", f"{built.get('reason')}: {built.get('message')}"
    return None


async def wait_built(api: client.CustomObjectsApi, namespace: str, name: str) -> tuple[str, str]:
    """Watch the one Environment (list, then watch from that resourceVersion: no event is missed)."""
    while True:
        listing = await api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                          field_selector=f"metadata.name={name}")
        for env in listing["items"]:
            if (found := verdict(env)) is not None:
                return found
        async with watch.Watch() as events:  # closes the watch's connection, also on return
            async for event in events.stream(
                    api.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL,
                    field_selector=f"metadata.name={name}", resource_version=listing["metadata"]["resourceVersion"],
                    timeout_seconds=60):
                if event["type"] in ("ADDED", "MODIFIED") and (found := verdict(event["object"])) is not None:
                    return found


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("-n", "--namespace", default="default")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--create", metavar="MANIFEST", help="objects to create once the image is built")
    args = parser.parse_args(argv)
    await config.load_kube_config()
    async with client.ApiClient() as api_client:
        try:
            outcome, detail = await asyncio.wait_for(
                wait_built(client.CustomObjectsApi(api_client), args.namespace, args.name), args.timeout)
        except TimeoutError:
            print(f"Environment {args.namespace}/{args.name} not built after {args.timeout:.0f}s", file=sys.stderr)
            return 2
        if outcome == "failed":
            print(f"Environment {args.namespace}/{args.name} failed to build: {detail}", file=sys.stderr)
            return 1
        print(detail)
        if args.create:
            with open(args.create) as manifest:
                documents = [d for d in yaml.safe_load_all(manifest) if d]
            for document in documents:
                await utils.create_from_dict(api_client, document, namespace=args.namespace)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
