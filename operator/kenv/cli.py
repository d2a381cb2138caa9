"""The `kenv` command (also `kubectl kenv` through the kubectl-plugin naming convention)."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kenv.crd import CRD_KINDS, KINDS, crd_file_name, render_crd_yaml
from kenv.errors import SpecError, describe_validation_error
from kenv.models import EnvironmentSpec
from kenv.render import BuildContext, Externals, render_context


def fail(message: str) -> int:
    print(f"kenv: {message}", file=sys.stderr)
    return 2


def load_manifest(path: str) -> dict[str, Any]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    try:
        documents = [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as error:
        raise SpecError(f"{path}: not valid YAML: {error}") from error
    for document in documents:
        if isinstance(document, dict) and document.get("kind") in KINDS:
            return document
    raise SpecError(f"{path}: no Environment or ClusterEnvironment document found")


def load_spec(manifest: dict[str, Any]) -> EnvironmentSpec:
    try:
        return EnvironmentSpec.model_validate(manifest.get("spec") or {})
    except ValidationError as error:
        raise SpecError(describe_validation_error(error)) from error


def load_context(args: argparse.Namespace) -> tuple[dict[str, Any], BuildContext]:
    manifest = load_manifest(args.file)
    spec = load_spec(manifest)
    externals = Externals(
        dockerfile=Path(args.dockerfile).read_text() if args.dockerfile else None,
        ca_bundle=Path(args.ca_bundle).read_text() if args.ca_bundle else None,
    )
    return manifest, render_context(spec, externals)


def cmd_crd(args: argparse.Namespace) -> int:
    for kind in CRD_KINDS:
        text = render_crd_yaml(kind)
        if args.write:
            Path(args.write, crd_file_name(kind)).write_text(text)
        else:
            print("---\n" + text, end="")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    _, context = load_context(args)
    if args.output:
        write_context(context, Path(args.output))
        print(f"wrote {len(context.files)} files to {args.output} (hash {context.hash})")
        return 0
    for name, content in sorted(context.files.items()):
        print(f"==> {name} <==\n{content}")
    return 0


def write_context(context: BuildContext, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in context.files.items():
        (directory / name).write_text(content)


def cmd_hash(args: argparse.Namespace) -> int:
    _, context = load_context(args)
    print(f"hash: {context.hash}\ntag:  {context.tag}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    """Azure ML build_local: the same rendered context, built here, pushed under the same content tag; with
    --local DIR, build_local(useDocker=False): the same rendered files installed into a venv or conda prefix."""
    if args.local:
        from kenv.localbuild import LocalBuildError, build_local_from_args

        try:
            return build_local_from_args(load_spec(load_manifest(args.file)), args)
        except LocalBuildError as error:
            return fail(str(error))
    if args.python or args.micromamba:
        return fail("--python and --micromamba only apply to --local DIR")
    _, context = load_context(args)
    destination = f"{args.destination_repo}:{context.tag}"
    tool = next((t for t in ("buildah", "podman", "docker") if shutil.which(t)), None)
    if tool is None:
        return fail("no buildah, podman or docker on PATH; install one to build locally")
    with tempfile.TemporaryDirectory(prefix="kenv-build-") as directory:
        write_context(context, Path(directory))
        tls = ["--tls-verify=false"] if args.insecure and tool != "docker" else []
        build = [tool, "build", *tls, "-t", destination, directory]
        if tool == "buildah":
            build = [tool, "--storage-driver", "vfs", "bud", "--isolation", "chroot", *tls, "-t", destination,
                     directory]
        subprocess.run(build, check=True)
        if args.push:
            digest_file = Path(directory, "digest")
            push = [tool, "push", destination]
            if tool == "buildah":
                push = [tool, "--storage-driver", "vfs", "push", *tls, "--digestfile", str(digest_file),
                        destination, f"docker://{destination}"]
            subprocess.run(push, check=True)
            if digest_file.exists():
                print(f"{args.destination_repo}@{digest_file.read_text().strip()}")
                return 0
    print(destination)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from kenv.logs import show_logs

    return asyncio.run(show_logs(args.name, args.namespace, args.cluster, args.follow, args.version))


def cmd_versions(args: argparse.Namespace) -> int:
    from kenv.versioncli import show_versions

    return asyncio.run(show_versions(args.name, args.namespace, args.cluster))


def cmd_diff(args: argparse.Namespace) -> int:
    from kenv.versioncli import show_diff

    return asyncio.run(show_diff(args.name, args.namespace, args.cluster, args.first, args.second))


def cmd_packages(args: argparse.Namespace) -> int:
    from kenv.contentscli import show_packages

    return asyncio.run(show_packages(args.name, args.namespace, args.cluster, args.version))


def cmd_sbom(args: argparse.Namespace) -> int:
    from kenv.contentscli import show_sbom

    return asyncio.run(show_sbom(args.name, args.namespace, args.cluster, args.version, args.insecure, args.output))


def cmd_catalog(args: argparse.Namespace) -> int:
    from kenv.catalog import show_catalog

    return asyncio.run(show_catalog())


def cmd_import(args: argparse.Namespace) -> int:
    from kenv.azureml import dump_manifests, import_azureml

    notes: list[str] = []
    manifests, warnings = import_azureml(args.path, name=args.name, include_secret=args.include_secret,
                                         pip_only=args.pip_only, notes=notes)
    for note in notes:
        print(f"kenv: note: {note}", file=sys.stderr)
    for warning in warnings:
        print(f"kenv: warning: {warning}", file=sys.stderr)
    print(dump_manifests(manifests), end="")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from kenv.azureml_export import export_azureml

    for warning in export_azureml(load_manifest(args.file), args.output, fmt=args.format):
        print(f"kenv: warning: {warning}", file=sys.stderr)
    print(f"wrote {args.format} Azure ML environment to {args.output}")
    return 0


def cmd_operator(args: argparse.Namespace) -> int:
    import functools

    import kopf

    try:
        from uvloop import run
    except ImportError:  # Windows: no uvloop
        from asyncio import run  # type: ignore[assignment]

    from kenv import main, roles, runtime, webhookserver

    role = roles.Role(args.role)
    settings = main.SETTINGS
    log_format = kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL
    kopf.configure(log_format=log_format, verbose=args.verbose)
    webhookserver.quiet_access_log(args.verbose)
    namespaces = runtime.watched_namespaces(settings)
    operator = functools.partial(
        kopf.operator, registry=main.registry(role), clusterwide=not namespaces, namespaces=namespaces,
        standalone=True, liveness_endpoint=args.liveness or None)
    # uvloop, as `kopf run` uses it when installed: admission's TLS round trips are its hot path (bench/webhook.py)
    run(roles.run(role, operator, args.liveness or None))
    return 0


def cmd_drain(args: argparse.Namespace) -> int:
    """The admission pods' preStop hook: tell the operator (the container's pid 1) to close each connection after
    its answer, then keep the pod serving while the API server moves its connections to the other replicas."""
    import os
    import time

    from kenv.roles import DRAIN_SIGNAL  # not webhookserver: importing kopf would delay the drain ~1 s

    try:
        os.kill(args.pid, DRAIN_SIGNAL)
    except ProcessLookupError:
        return fail(f"--pid {args.pid}: no such process; give the operator's pid")
    time.sleep(args.seconds)
    return 0


def cmd_append_layers(args: argparse.Namespace) -> int:
    from kenv.layerpush import append_layers

    return asyncio.run(append_layers(args.base, args.destination, args.layer, args.created_by,
                                     args.insecure_registry, args.digest_file))


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="kenv", description="Azure ML-style Environments for Kubernetes.")
    sub = root.add_subparsers(dest="command", required=True)

    def with_file(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("-f", "--file", required=True, help="Environment manifest (YAML), - for stdin")
        p.add_argument("--dockerfile", help="file standing in for spec.docker.dockerfileFrom's ConfigMap")
        p.add_argument("--ca-bundle", help="file standing in for spec.build.caBundle's ConfigMap")
        return p

    p = sub.add_parser("operator", help="run the operator against the current kubeconfig")
    p.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="health endpoint URL ('' = off)")
    p.add_argument("--role", choices=["all", "admission", "reconciler"], default="all",
                   help="admission: index and serve the webhook only (any number of replicas); reconciler: build "
                   "and record status, while holding the Lease (KENV_LEADER_ELECTION); all: both (default)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(run=cmd_operator)
    p = sub.add_parser("drain", help="preStop hook of an admission pod: make the operator close kept-alive "
                       "connections, then wait")
    p.add_argument("--pid", type=int, default=1, help="the operator's process (default 1: the container's)")
    p.add_argument("--seconds", type=float, default=5.0, help="how long to keep serving (default 5)")
    p.set_defaults(run=cmd_drain)
    p = sub.add_parser("append-layers", help="push an image with layers (tars) added on top of another: the push "
                       "step of an incremental build, run in its build pod")
    p.add_argument("--base", required=True, help="the image built on, repo@digest")
    p.add_argument("--destination", required=True, help="repo:tag to push, in the base image's repository")
    p.add_argument("--layer", action="append", required=True, help="an uncompressed layer tar (repeat, lowest first)")
    p.add_argument("--created-by", default="kenv append-layers", help="the layers' history entry")
    p.add_argument("--insecure-registry", action="append", default=[], help="a registry reached over plain HTTP")
    p.add_argument("--digest-file", default="/dev/termination-log", help="where the pushed digest is written")
    p.set_defaults(run=cmd_append_layers)
    p = sub.add_parser("crd", help="print the CRDs generated from the models")
    p.add_argument("--write", metavar="DIR", help="write crds/<group>_<plural>.yaml files into DIR")
    p.set_defaults(run=cmd_crd)
    p = with_file(sub.add_parser("render", help="print or write the build context"))
    p.add_argument("-o", "--output", help="directory to write the context into")
    p.set_defaults(run=cmd_render)
    with_file(sub.add_parser("hash", help="print the content hash and image tag")).set_defaults(run=cmd_hash)
    p = with_file(sub.add_parser("build", help="build the image locally (Azure ML build_local)"))
    p.add_argument("--destination-repo", default="localhost/kenv", help="repository to tag (and push) into")
    p.add_argument("--push", action="store_true", help="push under the content tag")
    p.add_argument("--insecure", action="store_true", help="pull and push over plain HTTP (a development registry)")
    p.add_argument("--local", metavar="DIR", help="no container: install the same files into a venv (pip) or a "
                   "micromamba prefix (conda) at DIR and write DIR/.kenv/activate.sh")
    p.add_argument("--python", metavar="PATH", help="--local: the python to make the venv from (default: one "
                   "matching spec.python.version, else python3)")
    p.add_argument("--micromamba", metavar="PATH", help="--local: micromamba to use (default: on PATH); with "
                   "python.version alone, solve python with conda as the cluster does")
    p.set_defaults(run=cmd_build)
    def with_environment(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("name")
        p.add_argument("-n", "--namespace", default=None)
        p.add_argument("--cluster", action="store_true", help="NAME is a ClusterEnvironment")
        return p

    p = with_environment(sub.add_parser("logs", help="show the build log of an Environment's latest build "
                                        "(live while its pod exists, then as kept), or of one version"))
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("--version", type=int, metavar="N", help="the kept build log of version N")
    p.set_defaults(run=cmd_logs)
    with_environment(sub.add_parser("versions", help="list an Environment's versions (EnvironmentVersion "
                                    "snapshots)")).set_defaults(run=cmd_versions)
    p = with_environment(sub.add_parser("diff", help="show how two versions of an Environment differ (image, "
                                        "definition and packages)"))
    p.add_argument("first", type=int, metavar="A")
    p.add_argument("second", type=int, metavar="B")
    p.set_defaults(run=cmd_diff)
    p = with_environment(sub.add_parser("packages", help="list the packages a version's image holds (its lock, "
                                        "as the build listed them)"))
    p.add_argument("--version", type=int, metavar="N", help="version N (default: the current one)")
    p.set_defaults(run=cmd_packages)
    p = with_environment(sub.add_parser("sbom", help="print the CycloneDX SBOM attached to a version's image "
                                        "in the registry"))
    p.add_argument("--version", type=int, metavar="N", help="version N (default: the current one)")
    p.add_argument("--insecure", action="store_true", help="reach the registry over plain HTTP")
    p.add_argument("-o", "--output", metavar="FILE", help="write the SBOM to FILE instead of standard output")
    p.set_defaults(run=cmd_sbom)
    sub.add_parser("catalog", help="list the curated ClusterEnvironments and their status").set_defaults(
        run=cmd_catalog)
    p = sub.add_parser("import-azureml", help="convert an Azure ML environment (v1 folder, v2 YAML, env.yml)")
    p.add_argument("path")
    p.add_argument("--name")
    p.add_argument("--include-secret", action="store_true",
                   help="also print the registry password, as a Secret manifest (default: the Environment names the "
                   "Secret and stderr gives the kubectl command that creates it)")
    p.add_argument("--pip-only", action="store_true",
                   help="when the conda part is only python, pip and a pip list, import the pip list as spec.pip, "
                   "installed with the base image's python3 instead of a conda environment (stderr says what changes)")
    p.set_defaults(run=cmd_import)
    p = sub.add_parser("export-azureml", help="write an Environment as an Azure ML environment")
    p.add_argument("-f", "--file", required=True)
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--format", choices=["v1", "v2"], default="v2")
    p.set_defaults(run=cmd_export)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (SpecError, FileNotFoundError) as error:
        return fail(str(error))
    except subprocess.CalledProcessError as error:
        return fail(f"{error.cmd[0]} failed with exit code {error.returncode}")


if __name__ == "__main__":
    sys.exit(main())
