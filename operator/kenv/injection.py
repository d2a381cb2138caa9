"""The admission webhook's pod mutation (and the operator's un-gating) as pure functions returning JSON Patch.

Errors: `choose_version` returns an `InjectionRefusal`; `build_pod_mutation` and `build_ungate_patch` raise
`InjectionRefused`, whose `.message` (naming the object and the fix) is what admission is denied with.
- Version: a pod receives one version whole: its image *and* its variables, secrets, bootstrap and shm. The
  annotation kenv.dev/version pins one (from its EnvironmentVersion snapshot); otherwise the current version,
  but only while it is what the spec asks for now (Ready for this generation, no rebuild pending). When a newer
  definition is not Ready yet, policy `gate` admits the pod with the scheduling gate `kenv.dev/image` and the
  new definition's variables (recording its runtime hash in kenv.dev/awaiting-runtime); the operator lifts the
  gate with the image of that same definition (`build_ungate_patch`) or, if the definition changed again
  meanwhile, leaves it gated with a Warning Event. A failed latest build refuses new pods with the reason and
  the annotation that pins the last good version. Policy `reject` refuses instead of gating; `last-ready` gives
  the last Ready version whole, with a warning. A gated pod's KENV_IMAGE/KENV_VERSION read the annotations
  ungating writes, through the downward API.
- Name clashes: the container's own `env` wins (the pod is more specific, as Kubernetes lets env win over
  envFrom); the Environment's variable is left out and named in `Mutation.warnings` and in the annotation
  `kenv.dev/overridden-env: "A,B"`. Within the Environment the first wins: KENV_*, environmentVariables,
  secretEnv. A container's envFrom is invisible at admission; the injected env beats it.
- Values are literal: `$` in environmentVariables and the bootstrap script is escaped as `$$` against the
  kubelet's $(VAR) expansion. Secrets are referenced by name in the pod's namespace, never copied.
- Bootstrap: the image's ENTRYPOINT is invisible at admission, so the container must set `command`; it becomes
  `/bin/sh -c <templates/bootstrap.sh.j2> kenv-bootstrap COMMAND... ARGS...` (args removed). The wrapper runs
  $KENV_BOOTSTRAP_SCRIPT (data, never shell code): a script starting with #! as a file under $TMPDIR with that
  interpreter, any other with `bash -e` where the image has bash, else `/bin/sh -e`. On failure it exits with
  the script's code and writes that code and the script's last output lines to the container's termination
  message ($KENV_TERMINATION_MESSAGE_PATH, the container's terminationMessagePath); else it execs the original
  argv untouched. RankZero: rank 0 runs it and writes $KENV_BOOTSTRAP_MARKER_DIR/kenv-bootstrap-<id>.done (or
  .failed); other ranks poll. The rank: $rankVariable (explicit, wins), else KENV_RANK_ZERO ("true"/"false", with
  KENV_RANK_SOURCE saying which label; set at admission from a framework's pod labels, see `framework_rank_zero`:
  KubeRay, JobSet and Master-less PyTorchJob pods have no rank variable that is 0 in exactly one pod), else RANK,
  else JOB_COMPLETION_INDEX, else 0. The id is $KENV_RUN_ID, else the run's name from the first of the labels
  RUN_LABELS the pod has (a JobSet, a RayCluster, a PyTorchJob, else the Job: a JobSet's child Jobs each have their
  own Job name, but all its pods must wait for one marker), else `default`; a JobSet's pods add `-attempt-<restart
  attempt>` ($KENV_RUN_ATTEMPT).
- Image followers: controllers copy the target container's image into other containers before any webhook
  (KubeRay's wait-gcs-ready init container and autoscaler sidecar). Every other container and initContainer
  (not ephemeral ones) whose image equals the target's as submitted (both absent or empty counts) gets the image
  kenv sets on the target: at admission (also the placeholder of a gated pod whose target has no image) and on
  un-gating (those still equal to the target's image). Only the image: no variables, no command wrapping.
- Idempotence: a pod annotated `kenv.dev/injected: "true"` gets an empty patch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import jinja2
from pydantic import ValidationError

from kenv import status as env_status
from kenv import versions
from kenv.errors import describe_validation_error
from kenv.models import BootstrapMode, EnvironmentSpec
from kenv.versions import Snapshot

CONTAINER_ANNOTATION = "kenv.dev/container"
VERSION_ANNOTATION = "kenv.dev/version"
INJECTED = "kenv.dev/injected"
INJECTED_ENVIRONMENT = "kenv.dev/injected-environment"
INJECTED_VERSION = "kenv.dev/injected-version"
INJECTED_IMAGE = "kenv.dev/injected-image"
AWAITING_IMAGE = "kenv.dev/awaiting-image"
# Also a label on gated pods, so the reconciler can watch exactly them (gatewatch.py) across processes.
AWAITING_LABEL = AWAITING_IMAGE
AWAITING_RUNTIME = "kenv.dev/awaiting-runtime"  # runtime hash of the definition a gated pod received
OVERRIDDEN_ENV = "kenv.dev/overridden-env"
GATE_NAME = "kenv.dev/image"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
# Labels naming the whole run a pod belongs to, most specific first: KENV_JOB_NAME, the marker's id, reads it.
RUN_LABELS = ("jobset.sigs.k8s.io/jobset-name", "ray.io/cluster", "training.kubeflow.org/job-name", JOB_NAME_LABEL)
RAY_NODE_TYPE = "ray.io/node-type"  # head | worker: the head is rank 0
# The training operator's pods: job-role=master on the master, or on worker 0 of a job without one.
TRAINING_REPLICA_TYPE = "training.kubeflow.org/replica-type"
TRAINING_JOB_ROLE = "training.kubeflow.org/job-role"
JOBSET_GLOBAL_INDEX = "jobset.sigs.k8s.io/job-global-index"  # the child Job's index across the JobSet
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"  # the pod's index in an Indexed Job
# A restarted JobSet keeps its name: its attempt joins the marker's id, so no replica of a new attempt takes the
# previous attempt's marker for its own.
JOBSET_RESTART_ATTEMPT = "jobset.sigs.k8s.io/restart-attempt"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_GATE = "kueue.x-k8s.io/admission"  # on the pods Kueue's pod integration queues
SHM_VOLUME = "kenv-dshm"
# Only for a gated container without any image (the API server requires one); replaced on un-gating.
PLACEHOLDER_IMAGE = "kenv.invalid/awaiting-environment-image"
RESERVED_ENV = ("KENV_BOOTSTRAP_SCRIPT", "KENV_BOOTSTRAP_MARKER_DIR", "KENV_TERMINATION_MESSAGE_PATH")
TERMINATION_MESSAGE_PATH = "/dev/termination-log"  # Kubernetes' default terminationMessagePath
DIGEST_IMAGE = re.compile(r"^[^@\s]+@sha256:[0-9a-f]{64}$")

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("kenv", "templates"),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,  # noqa: S701 - renders a shell script, never HTML
)
Op = dict[str, Any]


@dataclass(frozen=True)
class EnvironmentView:
    kind: Literal["Environment", "ClusterEnvironment"]
    name: str
    namespace: str | None  # None for a ClusterEnvironment
    spec: EnvironmentSpec
    status: dict[str, Any] = field(default_factory=dict)  # raw CR status (camelCase keys)
    generation: int | None = None  # metadata.generation: the status describes this spec only if it matches
    rebuild_token: str | None = None  # the kenv.dev/rebuild annotation: a rebuild asked for is not Ready yet
    versions: Mapping[int, Snapshot] = field(default_factory=dict)  # EnvironmentVersion snapshots by number

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else f"cluster/{self.name}"


@dataclass(frozen=True)
class InjectionSettings:
    pull_secret: str | None = None
    pending_image_policy: str = "gate"  # gate | reject | last-ready; kenv.config.PendingImagePolicy compares equal
    gate_name: str = GATE_NAME


@dataclass(frozen=True)
class Mutation:
    patch: list[Op]  # RFC 6902 operations against the pod as received
    gated: bool = False
    annotations: dict[str, str] = field(default_factory=dict)  # what the patch adds
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class VersionChoice:
    version: int | None
    image: str | None  # repo@sha256:..., or None: gated until the current definition's version is Ready
    spec: EnvironmentSpec  # whose variables, secrets, bootstrap and shm the pod receives
    pinned: bool = False  # chosen by the kenv.dev/version annotation
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class InjectionRefusal:
    message: str


class InjectionRefused(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _titles(kind: str, name: str, namespace: str | None) -> tuple[str, str]:
    """('Environment ns/name', 'env/name -n ns') for messages."""
    if namespace:
        return f"{kind} {namespace}/{name}", f"env/{name} -n {namespace}"
    return f"{kind} {name}", f"cenv/{name}"


def _int(value: object) -> int | None:
    if isinstance(value, int) or (isinstance(value, str) and re.fullmatch(r"[0-9]+", value)):
        return int(value)
    return None


def _fresh_version(env: EnvironmentView) -> int | None:
    """The current version's number when it is what the spec asks for now (its definition is the spec's)."""
    status = env.status or {}
    return _int(status.get("version")) if env_status.is_current(status, env.generation, env.rebuild_token) else None


def _snapshot_spec(env: EnvironmentView, snapshot: Snapshot, title: str) -> tuple[EnvironmentSpec, list[str]]:
    """The spec a version's pods receive: its recorded definition (the current spec, already validated, when
    the version is current), or for a version migrated from an earlier release (whose definition was not
    recorded) the current spec, with a warning saying so."""
    if snapshot.number == _fresh_version(env):
        return env.spec, []
    if snapshot.definition is None:
        return env.spec, [f"{title} version {snapshot.number} was recorded before kenv kept whole definitions; "
                          "its variables, secrets, bootstrap and shm come from the current spec"]
    try:
        return EnvironmentSpec.model_validate(snapshot.definition), []
    except ValidationError as error:
        raise InjectionRefused(f"{title} version {snapshot.number} has a definition this kenv cannot read: "
                               f"{describe_validation_error(error)}; pin another version") from error


def _known_versions(env: EnvironmentView) -> dict[int, Snapshot]:
    """Snapshots by number: the EnvironmentVersion objects, plus what the status alone tells: an earlier
    release's status.history (not migrated yet), and the current version while it is current (its definition
    is the spec's) even before its object reached the index. A status-only current version that is *not*
    current any more is left out: its definition is unknown here, and the new spec's is not its."""
    status = env.status or {}
    known: dict[int, Snapshot] = {}
    for record in status.get("history") or []:
        number = _int(record.get("version"))
        if number and record.get("image"):
            known[number] = Snapshot(number=number, image=str(record["image"]))
    fresh = _fresh_version(env)
    if fresh and status.get("image"):
        known[fresh] = Snapshot(number=fresh, image=str(status["image"]))
    return known | dict(env.versions)


def _pin_hint(number: int | None) -> str:
    return f'; to use version {number} meanwhile, annotate the pod with kenv.dev/version: "{number}"' if number else ""


def choose_version(env: EnvironmentView, requested: str | None,
                   policy: str = "gate") -> VersionChoice | InjectionRefusal:
    """What a pod receives: the version its `kenv.dev/version` annotation pins, else the current version when
    it is what the spec asks for now; else (a newer definition not Ready yet) a gate, a refusal or, with policy
    last-ready, the last Ready version. Never the image of one version with the variables of another."""
    status = env.status or {}
    title, ref = _titles(env.kind, env.name, env.namespace)
    see = f"see kenv versions {env.name}" + (f" -n {env.namespace}" if env.namespace else " --cluster")
    known = _known_versions(env)
    current = _int(status.get("version"))
    if requested is not None:
        number = _int(requested.strip())
        snapshot = known.get(number) if number is not None else None
        if snapshot is None:
            numbers = ", ".join(str(v) for v in sorted(known)) or "none yet"
            shown = requested if number is not None else repr(requested)
            return InjectionRefusal(f"{title} has no version {shown} (known: {numbers}); {see}")
        return _from_snapshot(env, snapshot, title, see, pinned=True)
    if current is not None and current == _fresh_version(env):
        return _from_snapshot(env, known[current], title, see)
    latest = known.get(current) if current else None
    if policy == "last-ready" and latest is not None:
        choice = _from_snapshot(env, latest, title, see)
        if isinstance(choice, VersionChoice):
            note = (f"{title} has a newer definition that is not Ready yet; this pod gets version {current} "
                    "(pending image policy last-ready)")
            return VersionChoice(choice.version, choice.image, choice.spec, warnings=(note, *choice.warnings))
        return choice
    phase = status.get("phase") or "Pending"
    if phase == "Failed" and status.get("observedGeneration") == env.generation:
        built = env_status.condition(status, env_status.BUILT) or {}
        reason = (str(built.get("message") or "the build failed").splitlines() or ["the build failed"])[0]
        reason = reason.removesuffix(":").removesuffix("; last log lines")[:300]
        where = f"-n {env.namespace}" if env.namespace else "--cluster"
        return InjectionRefusal(f"{title} failed to build its latest definition: {reason}; see `kenv logs "
                                f"{env.name} {where}`, fix the spec or rebuild" + _pin_hint(current))
    if policy == "reject":  # gate, and last-ready with no version to give yet, gate the pod
        return InjectionRefusal(f"{title} is still building its latest definition (phase {phase}); wait for it "
                                f"with `kubectl wait --for=condition=Ready {ref}`, then create the pod again"
                                + _pin_hint(current))
    return VersionChoice(version=None, image=None, spec=env.spec)


def _from_snapshot(env: EnvironmentView, snapshot: Snapshot, title: str, see: str,
                   pinned: bool = False) -> VersionChoice | InjectionRefusal:
    if not DIGEST_IMAGE.match(snapshot.image):
        return InjectionRefusal(f"{title} version {snapshot.number} has image {snapshot.image!r}, not pinned by "
                                f"digest (repo@sha256:...); kenv injects only digests; {see}")
    spec, warnings = _snapshot_spec(env, snapshot, title)
    return VersionChoice(snapshot.number, snapshot.image, spec, pinned=pinned, warnings=tuple(warnings))


def _pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _literal(value: str) -> str:
    """Escape the kubelet's $(VAR) expansion, which also reduces `$$` to `$`."""
    return value.replace("$", "$$")


def _target(pod: dict[str, Any], wanted: str | None = None) -> tuple[int, dict[str, Any]]:
    containers = (pod.get("spec") or {}).get("containers") or []
    if not containers:
        raise InjectionRefused("the pod has no containers to inject the environment into")
    wanted = wanted or ((pod.get("metadata") or {}).get("annotations") or {}).get(CONTAINER_ANNOTATION)
    if wanted is None:
        return 0, containers[0]
    for index, container in enumerate(containers):
        if container.get("name") == wanted:
            return index, container
    names = ", ".join(str(c.get("name")) for c in containers)
    raise InjectionRefused(f"annotation {CONTAINER_ANNOTATION} names container {wanted!r}, "
                           f"but the pod's containers are: {names}")


def _extend(ops: list[Op], parent: dict[str, Any], key: str, path: str, items: list[Any]) -> None:
    """Append items to parent[key]: one `add` of the whole list when absent, `/-` appends otherwise."""
    if items and isinstance(parent.get(key), list):
        ops.extend({"op": "add", "path": f"{path}/{key}/-", "value": item} for item in items)
    elif items:
        ops.append({"op": "add", "path": f"{path}/{key}", "value": list(items)})


def _annotate(ops: list[Op], pod: dict[str, Any], values: dict[str, str]) -> None:
    metadata = pod.get("metadata")
    if not isinstance(metadata, dict):
        ops.append({"op": "add", "path": "/metadata", "value": {"annotations": dict(values)}})
    elif not isinstance(metadata.get("annotations"), dict):
        ops.append({"op": "add", "path": "/metadata/annotations", "value": dict(values)})
    else:
        ops.extend({"op": "add", "path": f"/metadata/annotations/{_pointer(k)}", "value": v}
                   for k, v in values.items())


def _names(parent: dict[str, Any], key: str) -> set[Any]:
    return {item.get("name") for item in parent.get(key) or []}


def _mounts(container: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in container.get("volumeMounts") or [] if isinstance(m.get("mountPath"), str)]


def _field(path: str) -> dict[str, Any]:
    return {"fieldRef": {"fieldPath": path}}


def render_bootstrap(spec: EnvironmentSpec) -> str:
    """The wrapper script before `$` escaping; spec.bootstrap must be set."""
    bootstrap = spec.bootstrap
    assert bootstrap is not None
    explicit = bootstrap.rank_variable
    if explicit is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", explicit):  # it lands in shell code
        raise InjectionRefused(f"bootstrap.rankVariable {explicit!r} is not a variable name")
    return _templates.get_template("bootstrap.sh.j2").render(
        mode=bootstrap.mode.value, explicit_rank_variables=[explicit] if explicit else [],
        default_rank_variables=[v for v in ("RANK", "JOB_COMPLETION_INDEX") if v != explicit],
        timeout_seconds=int(bootstrap.timeout_seconds),
    )


def _index_in_metadata(pod: dict[str, Any], key: str) -> tuple[str, int | None] | None:
    """('label key=value', its integer value or None) from the pod's label `key`, else its annotation."""
    metadata = pod.get("metadata") or {}
    for kind in ("label", "annotation"):
        value = (metadata.get(kind + "s") or {}).get(key)
        if value is not None:
            return f"{kind} {key}={value}", _int(value)
    return None


def framework_rank_zero(pod: dict[str, Any]) -> tuple[str, bool] | None:
    """(the signal read, whether this pod is rank 0) for pods of frameworks whose rank variables do not single
    out one pod: KubeRay sets none (its head is rank 0); the training operator sets RANK only when the job has a
    Master, but labels its rank-0 pod job-role=master either way (the master, else worker 0); in a JobSet every
    child Job is Indexed, so each has a pod with JOB_COMPLETION_INDEX 0 (rank 0 is completion index 0 of global
    Job index 0; a child Job without a completion index has one pod). None for other pods, and for a malformed
    index (the variables decide)."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    node_type = labels.get(RAY_NODE_TYPE)
    if node_type:
        return f"label {RAY_NODE_TYPE}={node_type}", node_type == "head"
    if labels.get(TRAINING_REPLICA_TYPE):
        role = labels.get(TRAINING_JOB_ROLE)
        if role:
            return f"label {TRAINING_JOB_ROLE}={role}", role == "master"
        return f"label {TRAINING_REPLICA_TYPE}={labels[TRAINING_REPLICA_TYPE]} without {TRAINING_JOB_ROLE}", False
    job = _index_in_metadata(pod, JOBSET_GLOBAL_INDEX)
    if job is None or job[1] is None:
        return None
    completion = _index_in_metadata(pod, COMPLETION_INDEX)
    if completion is None:
        return job[0], job[1] == 0
    if completion[1] is None:
        return None
    return f"{job[0]}, {completion[0]}", job[1] == 0 and completion[1] == 0


def _run_label(pod: dict[str, Any]) -> str:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return next((label for label in RUN_LABELS if labels.get(label)), JOB_NAME_LABEL)


def _covers(mount_path: str, directory: str) -> bool:
    mount = mount_path.rstrip("/")
    return directory == (mount or "/") or directory.startswith(mount + "/")


def _bootstrap(env: EnvironmentView, spec: EnvironmentSpec, pod: dict[str, Any], container: dict[str, Any],
               warnings: list[str]) -> tuple[list[str], list[Op]]:
    """(wrapped command, env entries) for spec.bootstrap."""
    bootstrap = spec.bootstrap
    assert bootstrap is not None
    where = f"container {container.get('name')!r} (Environment {env.ref} has spec.bootstrap)"
    if not container.get("command"):
        raise InjectionRefused(f"{where}: pods using a bootstrap script must set command: the image's "
                               "ENTRYPOINT is not visible at admission")
    message_path = container.get("terminationMessagePath") or TERMINATION_MESSAGE_PATH
    entries: list[Op] = [{"name": "KENV_BOOTSTRAP_SCRIPT", "value": _literal(bootstrap.script)},
                         {"name": "KENV_TERMINATION_MESSAGE_PATH", "value": _literal(message_path)}]
    if bootstrap.mode == BootstrapMode.RANK_ZERO:
        directory = bootstrap.marker_dir.rstrip("/") or "/"
        mounts = [m for m in _mounts(container) if _covers(m["mountPath"], directory)]
        if not mounts:
            raise InjectionRefused(
                f"{where}: bootstrap mode RankZero needs a volume shared by all ranks (e.g. a ReadWriteMany "
                f"PersistentVolumeClaim) mounted at {directory}, where rank 0 writes its completion marker; "
                f"add a volumeMount with mountPath {directory}")
        mount = max(mounts, key=lambda m: len(m["mountPath"]))
        volumes = {v.get("name"): v for v in (pod.get("spec") or {}).get("volumes") or []}
        if "emptyDir" in volumes.get(mount.get("name"), {}):
            warnings.append(f"bootstrap marker dir {directory} is an emptyDir, which other pods cannot see")
        entries += [{"name": "KENV_BOOTSTRAP_MARKER_DIR", "value": directory},
                    {"name": "KENV_JOB_NAME", "valueFrom": _field(f"metadata.labels['{_run_label(pod)}']")}]
        if JOBSET_RESTART_ATTEMPT in ((pod.get("metadata") or {}).get("labels") or {}):
            attempt = _field(f"metadata.labels['{JOBSET_RESTART_ATTEMPT}']")
            entries.append({"name": "KENV_RUN_ATTEMPT", "valueFrom": attempt})
        signal = framework_rank_zero(pod)
        # A container's own KENV_RANK_ZERO wins (as any variable it sets); kenv's source would misdescribe it.
        if signal is not None and "KENV_RANK_ZERO" not in _names(container, "env"):
            source, rank_zero = signal
            entries += [{"name": "KENV_RANK_ZERO", "value": "true" if rank_zero else "false"},
                        {"name": "KENV_RANK_SOURCE", "value": _literal(source)}]
    argv = list(container["command"]) + list(container.get("args") or [])
    return ["/bin/sh", "-c", _literal(render_bootstrap(spec)), "kenv-bootstrap", *argv], entries


def _image_followers(pod: dict[str, Any], index: int, image: str | None) -> list[str]:
    """Paths of the other containers and initContainers whose image is `image` (absent counts as empty): the
    image followers of the target container `index` (module docstring)."""
    spec = pod.get("spec") or {}
    return [f"/spec/{key}/{position}" for key in ("containers", "initContainers")
            for position, other in enumerate(spec.get(key) or [])
            if (key, position) != ("containers", index) and (other.get("image") or "") == (image or "")]


def _env_entries(env: EnvironmentView, choice: VersionChoice) -> list[Op]:
    spec = choice.spec
    entries: list[Op] = [{"name": "KENV_ENVIRONMENT", "value": env.ref}]
    if choice.image is None:  # gated: build_ungate_patch writes these annotations before the pod starts
        entries += [{"name": var, "valueFrom": _field(f"metadata.annotations['{key}']")}
                    for var, key in (("KENV_VERSION", INJECTED_VERSION), ("KENV_IMAGE", INJECTED_IMAGE))]
    else:
        entries += [{"name": "KENV_VERSION", "value": "" if choice.version is None else str(choice.version)},
                    {"name": "KENV_IMAGE", "value": choice.image}]
    entries.append({"name": "KENV_PYTHON", "value": versions.python_path(spec)})
    entries += [{"name": k, "value": _literal(v)} for k, v in spec.environment_variables.items()]
    for item in spec.secret_env:
        ref = item.secret_key_ref
        key_ref = {"name": ref.name, "key": ref.key, "optional": ref.optional}
        entries.append({"name": item.name, "valueFrom": {"secretKeyRef": key_ref}})
    return entries


def _merge_env(title: str, container: dict[str, Any], entries: list[Op],
               warnings: list[str]) -> tuple[list[Op], list[str]]:
    """(entries to add, names the container overrides); see the clash policy in the module docstring."""
    existing = {e.get("name") for e in container.get("env") or []}
    added: list[Op] = []
    overridden: list[str] = []
    for entry in entries:
        if entry["name"] in existing:
            overridden.append(entry["name"])
        elif any(a["name"] == entry["name"] for a in added):
            warnings.append(f"{title} defines {entry['name']} twice; the first definition is used")
        else:
            added.append(entry)
    if overridden:
        warnings.append(f"container {container.get('name')!r} sets {', '.join(overridden)} itself; its "
                        f"values win over {title}'s (annotation {OVERRIDDEN_ENV})")
    return added, overridden


def build_pod_mutation(pod: dict[str, Any], env: EnvironmentView, settings: InjectionSettings) -> Mutation:
    """The JSON Patch injecting `env` into `pod`; raises InjectionRefused when the pod must be denied."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    title, _ = _titles(env.kind, env.name, env.namespace)
    if annotations.get(INJECTED) == "true":
        # Re-invoked after a later webhook changed the pod: Kueue's pod webhook may have queued a pod kenv gated
        # (its default LocalQueue, manageJobsWithoutQueueName), which kenv could not see the first time.
        if pod_is_awaiting_image(pod, settings.gate_name) and KUEUE_GATE in _names(pod.get("spec") or {},
                                                                                     "schedulingGates"):
            raise InjectionRefused(_kueue_refusal(env))
        return Mutation(patch=[])
    spec = pod.get("spec") or {}
    index, container = _target(pod)
    choice = choose_version(env, annotations.get(VERSION_ANNOTATION), settings.pending_image_policy)
    if isinstance(choice, InjectionRefusal):
        raise InjectionRefused(choice.message)
    gated, chosen = choice.image is None, choice.spec
    if gated and _queued_by_kueue_pod_integration(pod):
        raise InjectionRefused(_kueue_refusal(env))
    warnings: list[str] = list(choice.warnings)
    path, name = f"/spec/containers/{index}", container.get("name")
    ops: list[Op] = []
    if not gated or not container.get("image"):
        ops += [{"op": "add", "path": f"{target}/image", "value": choice.image or PLACEHOLDER_IMAGE}
                for target in (path, *_image_followers(pod, index, container.get("image")))]
    entries = _env_entries(env, choice)
    command = None
    if chosen.bootstrap is not None:
        command, more = _bootstrap(env, chosen, pod, container, warnings)
        entries += more
        reserved = sorted(_names(container, "env").intersection(RESERVED_ENV))
        if reserved:
            raise InjectionRefused(f"container {name!r} sets {', '.join(reserved)}, used by kenv's bootstrap")
    added, overridden = _merge_env(title, container, entries, warnings)
    _extend(ops, container, "env", path, added)
    env_from = [{"secretRef": {"name": s.secret_name, "optional": s.optional}}
                | ({"prefix": s.prefix} if s.prefix else {}) for s in chosen.secret_env_from]
    env_from = [e for e in env_from if e not in (container.get("envFrom") or [])]
    _extend(ops, container, "envFrom", path, env_from)
    if command is not None:
        ops.append({"op": "add", "path": f"{path}/command", "value": command})
        if "args" in container:
            ops.append({"op": "remove", "path": f"{path}/args"})
    shm = chosen.docker.shm_size
    if shm is not None:
        if any(m["mountPath"].rstrip("/") == "/dev/shm" for m in _mounts(container)):
            warnings.append(f"container {name!r} mounts /dev/shm itself; docker.shmSize {shm} is not applied")
        elif SHM_VOLUME in _names(spec, "volumes"):
            warnings.append(f"the pod already has a volume {SHM_VOLUME}; docker.shmSize {shm} is not applied")
        else:
            volume = {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": shm}}
            _extend(ops, spec, "volumes", "/spec", [volume])
            _extend(ops, container, "volumeMounts", path, [{"name": SHM_VOLUME, "mountPath": "/dev/shm"}])
    if settings.pull_secret and settings.pull_secret not in _names(spec, "imagePullSecrets"):
        _extend(ops, spec, "imagePullSecrets", "/spec", [{"name": settings.pull_secret}])
    if gated and settings.gate_name not in _names(spec, "schedulingGates"):
        _extend(ops, spec, "schedulingGates", "/spec", [{"name": settings.gate_name}])
    added_annotations = {INJECTED_ENVIRONMENT: env.ref}
    if gated:
        added_annotations[AWAITING_IMAGE] = "true"
        added_annotations[AWAITING_RUNTIME] = versions.runtime_hash(chosen)
        metadata = pod.get("metadata")
        if isinstance(metadata, dict) and isinstance(metadata.get("labels"), dict):  # as the webhook's selector
            ops.append({"op": "add", "path": f"/metadata/labels/{_pointer(AWAITING_LABEL)}", "value": "true"})
        elif isinstance(metadata, dict):
            ops.append({"op": "add", "path": "/metadata/labels", "value": {AWAITING_LABEL: "true"}})
    else:
        if choice.version is not None:
            added_annotations[INJECTED_VERSION] = str(choice.version)
        added_annotations[INJECTED_IMAGE] = str(choice.image)
    if overridden:
        added_annotations[OVERRIDDEN_ENV] = ",".join(overridden)
    added_annotations[INJECTED] = "true"
    _annotate(ops, pod, added_annotations)
    return Mutation(patch=ops, gated=gated, annotations=added_annotations, warnings=warnings)


def _queued_by_kueue_pod_integration(pod: dict[str, Any]) -> bool:
    """A pod Kueue queues itself (its `pod` integration): labelled with a queue and made by no controller (the
    pods of a queued Job, JobSet, PyTorchJob... are queued through their owner, which Kueue suspends instead).
    A pod Kueue queues without the label (a LocalQueue named `default`) is caught when kenv is re-invoked after
    Kueue's webhook added its gate (build_pod_mutation)."""
    metadata = pod.get("metadata") or {}
    controlled = any(o.get("controller") for o in metadata.get("ownerReferences") or [])
    return bool((metadata.get("labels") or {}).get(KUEUE_QUEUE_LABEL)) and not controlled


def _kueue_refusal(env: EnvironmentView) -> str:
    title, ref = _titles(env.kind, env.name, env.namespace)
    return (f"{title} is still building its image, and this pod is queued by Kueue's pod integration "
            f"({KUEUE_QUEUE_LABEL}, or a LocalQueue named default): Kueue compares a queued pod's containers with its "
            "Workload and deletes the pod when kenv sets the image once the build is Ready, so the pod cannot wait "
            "gated. Create it once "
            f"`kubectl wait {ref} --for=condition=Built` succeeds, or queue a Job instead (Kueue suspends the Job, "
            "so its pods are created after admission and may wait for the image)")


def pod_is_awaiting_image(pod: dict[str, Any], gate_name: str = GATE_NAME) -> bool:
    """True for a pod admitted while its Environment had no image, and not un-gated yet."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    gates = (pod.get("spec") or {}).get("schedulingGates") or []
    return annotations.get(AWAITING_IMAGE) == "true" and any(g.get("name") == gate_name for g in gates)


def build_ungate_patch(pod: dict[str, Any], image: str, container_name: str | None = None, *,
                       version: int | None = None, gate_name: str = GATE_NAME) -> list[Op]:
    """For the operator once the image is Ready: set the image of the target container (container_name, else the
    kenv.dev/container annotation, else the first) and of its image followers, lift only kenv's scheduling gate,
    write kenv.dev/injected-image (and -version when given: gated pods read both as KENV_IMAGE/KENV_VERSION) and
    drop kenv.dev/awaiting-image (annotation and label). `test` ops make the patch fail on a pod that changed
    meanwhile."""
    if not DIGEST_IMAGE.match(image):
        raise InjectionRefused(f"image {image!r} is not pinned by digest (repo@sha256:...)")
    index, container = _target(pod, container_name)
    path = f"/spec/containers/{index}"
    ops: list[Op] = [{"op": "test", "path": f"{path}/name", "value": container.get("name")},
                     {"op": "add", "path": f"{path}/image", "value": image}]
    for follower in _image_followers(pod, index, container.get("image")):
        ops += [{"op": "test", "path": f"{follower}/image", "value": container.get("image")},
                {"op": "add", "path": f"{follower}/image", "value": image}]
    gates = (pod.get("spec") or {}).get("schedulingGates") or []
    for position in reversed(range(len(gates))):
        if gates[position].get("name") == gate_name:
            gate = f"/spec/schedulingGates/{position}"
            ops += [{"op": "test", "path": gate, "value": gates[position]}, {"op": "remove", "path": gate}]
    values = {INJECTED_IMAGE: image} | ({INJECTED_VERSION: str(version)} if version is not None else {})
    _annotate(ops, pod, values)
    for key in (AWAITING_IMAGE, AWAITING_RUNTIME):
        if key in ((pod.get("metadata") or {}).get("annotations") or {}):
            ops.append({"op": "remove", "path": f"/metadata/annotations/{_pointer(key)}"})
    if AWAITING_LABEL in ((pod.get("metadata") or {}).get("labels") or {}):
        ops.append({"op": "remove", "path": f"/metadata/labels/{_pointer(AWAITING_LABEL)}"})
    return ops
