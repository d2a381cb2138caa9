"""Pure builders for the objects of one image build: context ConfigMap, docker-config Secret and the Job.

Builds run in one build namespace (the operator's), not beside the Environment: push credentials never leave
it, and one build serves every Environment with the same content hash in any namespace. Kubernetes forbids
owner references across namespaces, so the Job is not owned by an Environment; the Job owns its ConfigMap and
Secrets (garbage-collected with it) and is removed by ttlSecondsAfterFinished.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from kenv.config import OperatorSettings
from kenv.models import Builder, BuildSettings, ResourceRequirements
from kenv.render import CA_FILE, CACHE_MOUNT, BuildContext, cache_build_args, render_template

LABEL_ROLE = "kenv.dev/role"
LABEL_HASH = "kenv.dev/hash"
ANNOTATION_HASH = "kenv.dev/hash"
ANNOTATION_DESTINATION = "kenv.dev/destination"
ANNOTATION_REQUESTED_BY = "kenv.dev/requested-by"
CA_KEY = CA_FILE  # the CA bundle in the context ConfigMap
# The context ConfigMap is mounted at /workspace with every key under context/: a ConfigMap volume's top-level
# entries are symlinks into a hidden ..data folder, which builders would COPY as dangling links; one level down
# they are plain files.
CONTEXT_MOUNT = "/workspace"
CONTEXT_DIR = f"{CONTEXT_MOUNT}/context"
# Private conda channels (spec.conda.channelCredentials): rattler's authentication file, from a per-build Secret.
# The conda installer (kenv-conda.py) uses CONDA_AUTH_DIR/auth.json as RATTLER_AUTH_FILE when it exists. Kaniko
# runs RUN steps in its own container's filesystem and never snapshots /kaniko or mount points, so RUN steps see
# the file and no image layer holds it. Kaniko only: buildah and BuildKit run RUN steps in a root of their own.
CONDA_AUTH_DIR = "/kaniko/kenv/conda"
CONDA_AUTH_KEY = "auth.json"
URL_WITH_USERINFO = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s@]*@", re.IGNORECASE)

# The builder scripts get the destination as "$1" (--destination=...) and never by interpolation.
# --layers: a layer per instruction, as Kaniko and BuildKit make, so the package lock is alone in the last one
# (without it buildah squashes every step into one layer, the whole environment's).
BUILDAH_SCRIPT = """set -eu
dest="${1#--destination=}"
[ -f "$REGISTRY_AUTH_FILE" ] || unset REGISTRY_AUTH_FILE  # no credentials mounted: anonymous
buildah bud --isolation chroot --storage-driver vfs --layers $KENV_TLS -f /workspace/context/Dockerfile \\
  -t "$dest" /workspace/context
buildah push --storage-driver vfs $KENV_TLS --digestfile /dev/termination-log "$dest" "docker://$dest"
"""
# The least privilege buildah needs in a pod, found by trying (README, "Builders"): it runs its build in a user
# namespace of its own, so it needs unshare(CLONE_NEWUSER) (not allowed by the RuntimeDefault seccomp profile
# without CAP_SYS_ADMIN, hence Unconfined) and, as root in the pod, CAP_SETUID/CAP_SETGID to write the id maps and
# CAP_SETFCAP to map uid 0. Every other capability is dropped; never privileged, no privilege escalation.
# Every build pod: the runtime's default seccomp profile unless its container needs otherwise (buildah, buildkit).
POD_SECURITY_CONTEXT = {"seccompProfile": {"type": "RuntimeDefault"}}
# Kaniko unpacks the base image over its own root filesystem and runs each RUN step as the Dockerfile's user, so
# it is root in its container (the executor cannot run otherwise) with a writable root. What it is kept from: no
# privilege escalation (no_new_privs: a setuid binary in a RUN step gains nothing), the runtime's default seccomp
# profile, and of the container runtime's default capabilities only those unpacking and installing use (files of
# any owner and mode, device nodes in base layers, file capabilities, dropping to a build user): NET_RAW,
# NET_BIND_SERVICE and SETPCAP are dropped.
KANIKO_SECURITY_CONTEXT = {
    "runAsUser": 0,
    "allowPrivilegeEscalation": False,
    "privileged": False,
    "capabilities": {"drop": ["ALL"], "add": ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                                              "SETGID", "SETUID", "SETFCAP", "SYS_CHROOT", "AUDIT_WRITE"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
BUILDAH_SECURITY_CONTEXT = {
    "privileged": False,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"], "add": ["SETUID", "SETGID", "SETFCAP"]},
    "seccompProfile": {"type": "Unconfined"},
}
# Rootless BuildKit (moby/buildkit's rootless layout, user 1000): rootlesskit makes a user namespace through the
# setuid newuidmap (so privilege escalation stays allowed) and needs unshare(CLONE_NEWUSER) and mounts in it,
# which the RuntimeDefault seccomp and AppArmor profiles forbid; --oci-worker-no-process-sandbox spares it a /proc
# mount it could not make unprivileged. Not root, not privileged, no capability added.
BUILDKIT_SECURITY_CONTEXT = {
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "runAsNonRoot": True,
    "privileged": False,
    "seccompProfile": {"type": "Unconfined"},
    "appArmorProfile": {"type": "Unconfined"},
}
BUILDKIT_STATE = "/home/user/.local/share/buildkit"
BUILDKIT_SCRIPT = """set -eu
dest="${1#--destination=}"
config="${TMPDIR:-/tmp}/kenv-buildkitd.toml"
: > "$config"
for registry in $KENV_INSECURE_REGISTRIES; do
  printf '[registry."%s"]\n  http = true\n  insecure = true\n' "$registry" >> "$config"
done
export BUILDKITD_FLAGS="--oci-worker-no-process-sandbox --config=$config"
buildctl-daemonless.sh build --frontend dockerfile.v0 --local context=/workspace/context \\
  --local dockerfile=/workspace/context \\
  --output "type=image,name=$dest,push=true$KENV_REGISTRY_INSECURE" --metadata-file /tmp/kenv-metadata.json
sed -n 's/.*"containerimage.digest": *"\\([^"]*\\)".*/\\1/p' /tmp/kenv-metadata.json > /dev/termination-log
"""


@dataclass(frozen=True)
class BuildPlan:
    """Everything that names one build attempt; derived from the API state only, so restarts agree."""

    hash: str
    destination: str  # repo:tag
    job_name: str
    namespace: str

    @property
    def context_config_map(self) -> str:
        return self.job_name + "-context"

    @property
    def docker_config_secret(self) -> str:
        return self.job_name + "-docker"

    @property
    def conda_auth_secret(self) -> str:
        return self.job_name + "-conda"


def hash_label(content_hash: str) -> str:
    return content_hash[:40]


def plan_build(context: BuildContext, settings: OperatorSettings, attempt_key: str = "") -> BuildPlan:
    """attempt_key is empty for the first build of a content; a rebuild token or retry makes a new Job name."""
    suffix = hashlib.sha256(attempt_key.encode()).hexdigest()[:6] if attempt_key else "0"
    return BuildPlan(
        hash=context.hash,
        destination=f"{settings.destination_repo}:{context.tag}",
        job_name=f"kenv-build-{context.hash[:20]}-{suffix}",
        namespace=settings.build_namespace,
    )


def registry_of(reference: str) -> str:
    return reference.split("/", 1)[0]


def build_context_config_map(plan: BuildPlan, context: BuildContext, ca_bundle: str | None) -> dict[str, Any]:
    data = dict(context.files)
    if ca_bundle:
        data[CA_KEY] = ca_bundle  # the builder trusts it for registries even when no install needs it
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": plan.context_config_map,
            "namespace": plan.namespace,
            "labels": {LABEL_ROLE: "build-context", LABEL_HASH: hash_label(plan.hash)},
        },
        "data": data,
    }


def merge_docker_configs(*configs: dict[str, Any]) -> dict[str, Any]:
    """Merge dockerconfigjson documents; later ones win per registry."""
    auths: dict[str, Any] = {}
    for config in configs:
        auths.update(config.get("auths", {}))
    return {"auths": auths}


def basic_auth_config(address: str, username: str, password: str) -> dict[str, Any]:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"auths": {address: {"auth": token}}}


def credentials_secret(plan: BuildPlan, name: str, secret_type: str, key: str, document: dict[str, Any]
                       ) -> dict[str, Any]:
    """A per-build Secret holding one JSON document (the Job owns it once created)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": secret_type,
        "metadata": {
            "name": name,
            "namespace": plan.namespace,
            "labels": {LABEL_ROLE: "build-credentials", LABEL_HASH: hash_label(plan.hash)},
        },
        "data": {key: base64.b64encode(json.dumps(document).encode()).decode()},
    }


def build_docker_config_secret(plan: BuildPlan, config: dict[str, Any]) -> dict[str, Any]:
    return credentials_secret(plan, plan.docker_config_secret, "kubernetes.io/dockerconfigjson", ".dockerconfigjson",
                              config)


def build_conda_auth_secret(plan: BuildPlan, auth: dict[str, Any]) -> dict[str, Any]:
    return credentials_secret(plan, plan.conda_auth_secret, "Opaque", CONDA_AUTH_KEY, auth)


@dataclass(frozen=True)
class BuildCredentials:
    """What one build authenticates with; each part that holds something becomes a Secret the Job mounts."""

    docker_config: dict[str, Any]  # dockerconfigjson: the push Secret's and the base registry's auths
    conda_auth: dict[str, Any] = field(default_factory=dict)  # rattler's authentication file, by channel host

    def secrets(self, plan: BuildPlan) -> list[dict[str, Any]]:
        """The per-build Secrets (none when there is nothing to hold)."""
        secrets = []
        if self.docker_config.get("auths"):
            secrets.append(build_docker_config_secret(plan, self.docker_config))
        if self.conda_auth:
            secrets.append(build_conda_auth_secret(plan, self.conda_auth))
        return secrets


def may_share_package_cache(files: dict[str, str], conda_credentials: bool) -> bool:
    """Whether a build may keep its downloads in the node's shared package cache: not one that fetches with
    credentials (conda channel credentials, a user:password@ URL in its requirements or environment file), whose
    packages builds of other teams must not be able to read there."""
    return not conda_credentials and not any(URL_WITH_USERINFO.search(text) for text in files.values())


def uses_package_cache(build: BuildSettings, settings: OperatorSettings, package_cache: bool) -> bool:
    """Whether a build pod mounts the operator's package cache: cached builds, with a cache configured, that may
    share it (may_share_package_cache)."""
    return build.cache and bool(settings.package_cache_dir) and package_cache


def package_cache_mount(settings: OperatorSettings) -> tuple[dict[str, Any], dict[str, Any]]:
    """(volumeMount, volume) of the package cache at CACHE_MOUNT: a mount point, so never in a snapshot."""
    return ({"name": "package-cache", "mountPath": CACHE_MOUNT},
            {"name": "package-cache", "hostPath": {"path": settings.package_cache_dir, "type": "DirectoryOrCreate"}})


def builder_container(
    builder: Builder, plan: BuildPlan, build: BuildSettings, settings: OperatorSettings, has_ca: bool,
    package_cache: bool = False,
) -> dict[str, Any]:
    """Image, command, args, env and docker-config location of the chosen builder."""
    insecure = settings.insecure_registry_list
    destination_insecure = registry_of(plan.destination) in insecure
    destination_arg = f"--destination={plan.destination}"
    if builder is Builder.KANIKO:
        args = [
            f"--context=dir://{CONTEXT_DIR}",
            f"--dockerfile={CONTEXT_DIR}/Dockerfile",
            destination_arg,
            "--digest-file=/dev/termination-log",
            f"--cache={'true' if build.cache else 'false'}",
            "--log-format=text",  # no ANSI colours in logs and in the failure message's log tail
        ]
        mounts: list[dict[str, Any]] = []
        volumes: list[dict[str, Any]] = []
        if build.cache:
            args.append(f"--cache-repo={settings.destination_repo}/cache")
        if uses_package_cache(build, settings, package_cache):
            # RUN steps reach the package cache through the build args (render.CACHE_ARGS).
            args += [f"--build-arg={name}={value}" for name, value in cache_build_args(CACHE_MOUNT).items()]
            mount, volume = package_cache_mount(settings)
            mounts.append(mount)
            volumes.append(volume)
        args += [f"--insecure-registry={registry}" for registry in insecure]
        env = [{"name": "SSL_CERT_DIR", "value": "/kaniko/ssl/certs:/kenv/ca"}] if has_ca else []
        return {"image": settings.kaniko_image, "command": None, "args": args, "env": env,
                "docker_config_dir": "/kaniko/.docker", "conda_auth_dir": CONDA_AUTH_DIR,
                "security_context": KANIKO_SECURITY_CONTEXT,
                "mounts": mounts, "volumes": volumes}
    tls = "--tls-verify=false" if destination_insecure else ("--cert-dir=/kenv/ca" if has_ca else "")
    if builder is Builder.BUILDAH:
        env = [{"name": "KENV_TLS", "value": tls},
               {"name": "REGISTRY_AUTH_FILE", "value": "/kenv/docker/config.json"}]
        return {"image": settings.buildah_image, "command": ["/bin/sh", "-c", BUILDAH_SCRIPT, "kenv-build"],
                "args": [destination_arg], "env": env, "docker_config_dir": "/kenv/docker", "conda_auth_dir": None,
                "security_context": BUILDAH_SECURITY_CONTEXT, "mounts": [], "volumes": []}
    env = [
        {"name": "KENV_REGISTRY_INSECURE", "value": ",registry.insecure=true" if destination_insecure else ""},
        {"name": "KENV_INSECURE_REGISTRIES", "value": " ".join(insecure)},
        {"name": "DOCKER_CONFIG", "value": "/kenv/docker"},
    ]
    if has_ca:
        env.append({"name": "SSL_CERT_DIR", "value": "/etc/ssl/certs:/kenv/ca"})
    # BuildKit's state must not be on the container's overlay root (no overlay on overlay): an emptyDir.
    state = {"name": "buildkit-state", "mountPath": BUILDKIT_STATE}
    return {"image": settings.buildkit_image, "command": ["/bin/sh", "-c", BUILDKIT_SCRIPT, "kenv-build"],
            "args": [destination_arg], "env": env, "docker_config_dir": "/kenv/docker", "conda_auth_dir": None,
            "security_context": BUILDKIT_SECURITY_CONTEXT, "mounts": [state],
            "volumes": [{"name": "buildkit-state", "emptyDir": {}}]}


def build_resources(defaults: ResourceRequirements, spec: ResourceRequirements | None) -> dict[str, Any]:
    """The build container's resources: per resource (cpu, memory, …), the spec's requests and limits when the
    spec names it, else the operator's defaults. Never a mix for one resource: a spec's 16Gi request beside a
    default 8Gi limit would be refused."""
    named = set(spec.requests) | set(spec.limits) if spec else set()
    out: dict[str, dict[str, str]] = {}
    for section in ("requests", "limits"):
        chosen = {name: value for name, value in getattr(defaults, section).items() if name not in named}
        if spec:
            chosen |= getattr(spec, section)
        if chosen:
            out[section] = dict(sorted(chosen.items()))
    return out


def builds_plan(job: dict[str, Any] | None, plan: BuildPlan) -> bool:
    """Whether `job` builds what `plan` pushes: this content to this tag. An incremental build of the same content
    (incremental.py) pushes another tag, so a full build never follows it, nor it a full build."""
    metadata = (job or {}).get("metadata") or {}
    return (metadata.get("labels") or {}).get(LABEL_HASH) == hash_label(plan.hash) and \
        (metadata.get("annotations") or {}).get(ANNOTATION_DESTINATION) == plan.destination


def build_job(
    plan: BuildPlan,
    build: BuildSettings,
    settings: OperatorSettings,
    *,
    requested_by: str,
    context_files: list[str],
    has_docker_config: bool,
    has_ca: bool,
    conda_auth_secret: str | None = None,
    package_cache: bool = False,
    container: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """context_files: the keys of the context ConfigMap (build_context_config_map), each mounted as a file;
    conda_auth_secret: a Secret from build_conda_auth_secret, mounted at CONDA_AUTH_DIR (Kaniko only);
    package_cache: whether the build may use the operator's package cache (see may_share_package_cache);
    container: what builder_container returns, for a Job whose container is not a builder's (incremental.py)."""
    container = container or builder_container(build.builder, plan, build, settings, has_ca, package_cache)
    if conda_auth_secret and not container["conda_auth_dir"]:
        raise ValueError(f"conda channel credentials need the kaniko builder, not {build.builder.value}")
    labels = {LABEL_ROLE: "build", LABEL_HASH: hash_label(plan.hash), "app.kubernetes.io/managed-by": "kenv"}
    resources = build_resources(settings.build_resources, build.resources)
    rendered = render_template(
        "build-job.yaml.j2",
        name=plan.job_name,
        namespace=plan.namespace,
        labels=labels,
        annotations={ANNOTATION_HASH: plan.hash, ANNOTATION_DESTINATION: plan.destination,
                     ANNOTATION_REQUESTED_BY: requested_by, "kenv.dev/builder": build.builder.value},
        timeout_seconds=build.timeout_seconds,
        ttl_seconds=settings.build_ttl_seconds,
        image=container["image"],
        command=container["command"],
        args=container["args"],
        env=container["env"],
        resources=resources,
        security_context=container["security_context"],
        pod_security_context=POD_SECURITY_CONTEXT,
        docker_config_secret=plan.docker_config_secret if has_docker_config else None,
        docker_config_dir=container["docker_config_dir"],
        conda_auth_secret=conda_auth_secret,
        conda_auth_dir=container["conda_auth_dir"],
        conda_auth_key=CONDA_AUTH_KEY,
        ca_bundle=has_ca,
        context_config_map=plan.context_config_map,
        context_mount=CONTEXT_MOUNT,
        context_items=[{"key": key, "path": f"context/{key}"} for key in sorted(context_files)],
        extra_mounts=container["mounts"],
        extra_volumes=container["volumes"],
    )
    job: dict[str, Any] = yaml.safe_load(rendered)
    return job


def owner_reference(job: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"],
            "uid": job["metadata"]["uid"], "controller": True, "blockOwnerDeletion": False}
