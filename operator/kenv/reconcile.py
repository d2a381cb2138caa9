"""From an Environment to a digest-pinned image: registry cache, one build Job per content, status.

`Reconciler.reconcile()` is level-triggered and idempotent: it reads the world (spec, status, Jobs, registry)
and returns the status patch for what it saw, creating a Job only when none exists for this content. Handlers
call it on create/update/resume and a timer calls it again until the Environment settles, so a restarted
operator continues from the API state alone.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from kenv import builds, condaauth, incremental, jobstate, kube, metrics, references, status, versions
from kenv.config import OperatorSettings, PendingImagePolicy
from kenv.errors import SpecError, describe_validation_error
from kenv.models import EnvironmentSpec
from kenv.refs import EnvironmentRef
from kenv.registry import Credentials, RegistryClient, RegistryError, credentials_for
from kenv.render import LOCK_SCRIPT, BuildContext, Externals, render_context
from kenv.statusmodels import Phase
from kenv.versionstore import NewVersion, VersionStore

REBUILD_ANNOTATION = "kenv.dev/rebuild"
BASE_TOKEN_PREFIX = "base-"  # rebuild tokens set by base image tracking


def rebuild_token(metadata: Mapping[str, Any]) -> str | None:
    """The kenv.dev/rebuild annotation of an Environment's metadata (a dict or kopf's Meta)."""
    return (metadata.get("annotations") or {}).get(REBUILD_ANNOTATION)
MAX_TRANSIENT_RETRIES = 3


@dataclass
class Outcome:
    status: dict[str, Any]
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)


class MissingReference(Exception):
    pass


@dataclass(frozen=True)
class Attempt:
    """One reconcile of one Environment: what it read and decided before converging on a build or a version."""

    ref: EnvironmentRef
    uid: str
    spec: EnvironmentSpec
    definition: dict[str, Any]  # the spec as the API holds it, recorded in version snapshots
    context: BuildContext
    ca_bundle: str | None
    plan: builds.BuildPlan
    current: dict[str, Any]  # the status as read
    generation: int | None
    token: str | None  # the kenv.dev/rebuild annotation
    forced: bool  # the token is new: build again even if the image exists
    references: str | None = None  # fingerprint of the ConfigMaps and Secret the spec names
    increment: incremental.Increment | None = None  # an incremental build's: installed into the current image
    full_plan: builds.BuildPlan | None = None  # an incremental build's: the full build to fall back on

    @property
    def runtime_hash(self) -> str:
        return versions.runtime_hash(self.spec)


class Reconciler:
    def __init__(self, settings: OperatorSettings, registry: RegistryClient,
                 version_index: Mapping[Any, Any] | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.versions = VersionStore(settings, registry, version_index)
        self.build_slots = asyncio.Lock()  # count-then-create must not interleave within this process
        self.queued: set[str] = set()
        # The image each Environment (by uid) was last counted Ready with: a poll and a build-watch nudge may both
        # find the same finished Job before either status lands (kopf runs timers beside change handlers).
        self.counted_ready: dict[str, str] = {}
        # The incremental Job whose failure was last announced (event, metric) for each Environment (by uid): the
        # same race can find one twice. One name per Environment, so it stays as small as counted_ready.
        self.fell_back: dict[str, str] = {}

    @property
    def previous_serves(self) -> bool:
        """Whether pods keep getting the last Ready version while a newer one builds (policy last-ready)."""
        return self.settings.pending_image_policy == PendingImagePolicy.LAST_READY

    def _progress(self, current: dict[str, Any], phase: Phase, reason: str, message: str, generation: int | None,
                  desired_hash: str | None = None) -> dict[str, Any]:
        return status.progress(current, phase, reason, message, generation, desired_hash,
                               previous_serves=self.previous_serves)

    async def reconcile(self, ref: EnvironmentRef, body: dict[str, Any], log: logging.Logger) -> Outcome:
        current = dict(body.get("status") or {})
        generation = body["metadata"].get("generation")
        try:
            spec = EnvironmentSpec.model_validate(body.get("spec") or {})
        except ValidationError as error:
            return self._invalid(current, describe_validation_error(error), generation)
        seen = await references.fingerprint(spec, ref.references_namespace(self.settings.build_namespace))
        outcome = await self._attempt(ref, body, spec, current, seen, log)
        return Outcome(references.record(outcome.status, current, seen), outcome.events)

    async def _attempt(self, ref: EnvironmentRef, body: dict[str, Any], spec: EnvironmentSpec,
                       current: dict[str, Any], seen: str | None, log: logging.Logger) -> Outcome:
        generation = body["metadata"].get("generation")
        try:
            condaauth.check_conda_installer(spec, self.settings.conda_installer)
        except SpecError as error:
            # The operator's setting is at fault, not a build of this content: with no desiredHash recorded, the
            # same generation builds once the operator runs with the rattler installer.
            invalid = self._invalid(current, str(error), generation)
            return Outcome({**invalid.status, "desiredHash": None}, invalid.events)
        try:
            externals = await self._externals(ref, spec)
            context = render_context(spec, externals)
        except MissingReference as missing:
            return Outcome(self._progress(current, Phase.PENDING, "MissingReference", str(missing), generation))
        except SpecError as error:
            return self._invalid(current, str(error), generation)

        token = rebuild_token(body["metadata"])
        forced = status.rebuild_pending(current, token)
        retrying = current.get("failedGeneration") is not None and current.get("desiredHash") == context.hash
        transient = current.get("transientRetries") or 0
        # A retry is named by the referenced objects it saw too: a fixed registry Secret gets a fresh Job.
        attempt_key = "|".join(filter(None, [f"rebuild:{token}" if forced else "",
                                             f"retry:{generation}" if retrying else "",
                                             f"refs:{seen}" if retrying and seen else "",
                                             f"transient:{transient}" if transient else "",
                                             self._credentials_key(ref, spec)]))
        attempt = Attempt(ref=ref, uid=str(body["metadata"].get("uid", "")), spec=spec,
                          definition=dict(body.get("spec") or {}), context=context, ca_bundle=externals.ca_bundle,
                          plan=builds.plan_build(context, self.settings, attempt_key), current=current,
                          generation=generation, token=token, forced=forced, references=seen)
        try:
            migrated = await self._migrate(attempt)
            if migrated:
                attempt = replace(attempt, current={**current, **migrated})
            attempt = await self._incremental(attempt, externals, log)
            outcome = await self._decide(attempt, retrying, log)
        except MissingReference as missing:
            return Outcome(self._progress(current, Phase.PENDING, "MissingReference", str(missing), generation))
        except RegistryError as error:
            message = f"{error}; retrying every {self.settings.poll_seconds:g}s"
            return Outcome(self._progress(current, Phase.PENDING, error.reason, message, generation, context.hash))
        return Outcome({**migrated, **outcome.status}, outcome.events)

    async def _migrate(self, attempt: Attempt) -> dict[str, Any]:
        """Status written by a release before EnvironmentVersion objects: move its history into them, once."""
        current = attempt.current
        if not current.get("history") and not (current.get("version") and not current.get("runtimeHash")):
            return {}
        return await self.versions.migrate(attempt.ref, attempt.uid, current, attempt.definition,
                                           attempt.runtime_hash, attempt.context.hash,
                                           await self._push_credentials(attempt.plan))

    async def _incremental(self, attempt: Attempt, externals: Externals, log: logging.Logger) -> Attempt:
        """The attempt as an incremental build when the spec asks for one and the edit qualifies (incremental.py):
        decided from the current version and the registry alone, so every reconcile of this edit agrees."""
        current = attempt.current
        parent, parent_hash, number = current.get("image"), current.get("hash"), current.get("version")
        if attempt.forced or not attempt.spec.build.incremental or not (parent and parent_hash and number) or \
                parent_hash == attempt.context.hash:
            return attempt
        if not self.settings.operator_image:
            log.info("%s: a full build: incremental builds need KENV_OPERATOR_IMAGE", attempt.ref.display)
            return attempt
        if current.get("incrementalFailed") == attempt.context.hash:
            return attempt  # its incremental build failed: this content is built in full
        kept = await self._versions_kept(attempt, int(number))
        snapshot = next((s for s in kept if s.number == int(number)), None)
        if snapshot is None or snapshot.definition is None or snapshot.image != parent:
            return attempt
        depth = incremental.chain_depth(kept, int(number))
        if depth >= incremental.MAX_CHAIN:
            log.info("%s: a full build: version %s's image carries %d incremental builds on its last full one, "
                     "and a full build flattens them", attempt.ref.display, number, depth)
            return attempt
        try:
            previous = render_context(EnvironmentSpec.model_validate(snapshot.definition), externals)
        except (ValidationError, SpecError):
            return attempt
        found = incremental.increment(previous, attempt.context, str(parent_hash), str(parent), attempt.spec,
                                      self.settings.destination_repo)
        if isinstance(found, str):
            log.info("%s: a full build: %s", attempt.ref.display, found)
            return attempt
        planned = replace(attempt, plan=incremental.plan_increment(attempt.plan, found), increment=found,
                          full_plan=attempt.plan)
        followed = await self._read_followed(attempt) if current.get("phase") == Phase.BUILDING else None
        for candidate in (planned, attempt):  # the build in flight decides, even if the registry changed since
            if builds.builds_plan(followed, candidate.plan):
                return candidate
        if await self.registry.digest(attempt.plan.destination, await self._push_credentials(attempt.plan)):
            return attempt  # a full build of this content exists: it is the one to use
        return planned

    async def _versions_kept(self, attempt: Attempt, number: int) -> list[versions.Snapshot]:
        """This environment's versions: from the index, else (it may lag an edit made right after version `number`
        was recorded) from the API."""
        kept: list[versions.Snapshot] = []
        for listed in (False, True):
            kept = await self.versions.snapshots(attempt.ref, attempt.uid, listed)
            if any(s.number == number for s in kept):
                return kept
        return kept

    async def _decide(self, attempt: Attempt, retrying: bool, log: logging.Logger) -> Outcome:
        current, generation = attempt.current, attempt.generation
        if not attempt.forced and current.get("phase") == Phase.READY and current.get("hash") == attempt.context.hash:
            if current.get("runtimeHash") == attempt.runtime_hash:
                return Outcome({"observedGeneration": generation, "conditions": [
                    {**c, "observedGeneration": generation} for c in current.get("conditions") or []]})
            # Only what pods receive besides the image changed: a new version of the same image, no build.
            return await self._ready(attempt, str(current["digest"]), incremental.SAME_IMAGE_REASON,
                                     "variables, secrets, bootstrap or shm changed; same image",
                                     image=str(current["image"]))
        if not attempt.forced and retrying and current.get("failedGeneration") == generation and \
                not references.changed_since_failure(current, attempt.references):
            return Outcome({})  # failed for this generation: wait for an edit, a rebuild token or a fixed reference
        return await self._converge(attempt, log)

    def _invalid(self, current: dict[str, Any], message: str, generation: int | None) -> Outcome:
        return Outcome(status.failed(current, "InvalidSpec", message, generation, None),
                       [("Warning", "InvalidSpec", message)])

    async def _externals(self, ref: EnvironmentRef, spec: EnvironmentSpec) -> Externals:
        namespace = ref.references_namespace(self.settings.build_namespace)

        async def config_map_value(field_name: str, name: str, key: str) -> str:
            value = await kube.read_config_map_key(namespace, name, key)
            if value is None:
                raise MissingReference(f"{field_name}: ConfigMap {namespace}/{name} has no key {key!r}; "
                                       f"create it (kubectl create configmap {name} -n {namespace} ...)")
            return value

        dockerfile = ca_bundle = None
        if spec.docker.dockerfile_from:
            source = spec.docker.dockerfile_from
            dockerfile = await config_map_value("spec.docker.dockerfileFrom", source.name, source.key)
        if spec.build.ca_bundle:
            source = spec.build.ca_bundle
            ca_bundle = await config_map_value("spec.build.caBundle", source.name, source.key)
        return Externals(dockerfile=dockerfile, ca_bundle=ca_bundle,
                         micromamba_image=self.settings.micromamba_image,
                         default_base_image=self.settings.default_base_image,
                         conda_installer=self.settings.conda_installer.value,
                         conda_installer_image=self.settings.conda_installer_image,
                         conda_glibc=self.settings.conda_glibc, conda_cuda=self.settings.conda_cuda)

    async def _push_config(self) -> dict[str, Any]:
        if not self.settings.push_secret:
            return {"auths": {}}
        config = await kube.read_docker_config(self.settings.build_namespace, self.settings.push_secret)
        if config is None:
            raise RegistryError("RegistryAuthFailed", f"push Secret {self.settings.build_namespace}/"
                                f"{self.settings.push_secret} is missing or not kubernetes.io/dockerconfigjson")
        return config

    async def _push_credentials(self, plan: builds.BuildPlan) -> Credentials | None:
        """Credentials for the destination registry (tagging versions), from the push Secret if any."""
        return credentials_for(builds.registry_of(plan.destination), await self._push_config())

    async def _converge(self, attempt: Attempt, log: logging.Logger) -> Outcome:
        plan, current, generation = attempt.plan, attempt.current, attempt.generation
        push_config = await self._push_config()
        push_credentials = credentials_for(builds.registry_of(plan.destination), push_config)
        waiting = attempt.forced or current.get("phase") == Phase.BUILDING
        own = await kube.read_job(plan.namespace, plan.job_name) if waiting else None
        if own is None and current.get("phase") == Phase.BUILDING:
            own = await self._followed_job(attempt)
        if own is not None and waiting:
            # We were waiting on this Job: its outcome decides, even if the pushed tag shows up first.
            if jobstate.job_finished(own):
                return await self._finished(attempt, own, push_credentials, log)
            return self._building(attempt, own)
        if not attempt.forced:
            digest = await self.registry.digest(plan.destination, push_credentials, keep=True)
            if digest:
                metrics.CACHE_HITS.inc()
                self.queued.discard(attempt.ref.display)
                if attempt.increment:  # an increment's image: on the current one, a link of its chain (chain_depth)
                    return await self._ready(attempt, digest, incremental.INCREMENTAL_FOUND_REASON,
                                             "this edit's image on the current version's is in the registry; no "
                                             "build needed", push_credentials)
                return await self._ready(attempt, digest, "ImageFound",
                                         "image with this content is in the registry; no build needed",
                                         push_credentials)
            if not waiting:
                # The image is not there: only now read the Job (a cache hit, the common case, needs none).
                own = await kube.read_job(plan.namespace, plan.job_name)
        if own is not None and jobstate.job_finished(own):  # this attempt already failed, no image since
            return await self._finished(attempt, own, push_credentials, log)
        job = own
        if job is None:
            active = [j for j in await kube.list_jobs(plan.namespace, f"{builds.LABEL_HASH}="
                                                      f"{builds.hash_label(plan.hash)}")
                      if builds.builds_plan(j, plan) and not jobstate.job_finished(j)]
            job = active[0] if active else None
        if job is not None:
            return self._building(attempt, job)
        job, created = await self._start_build(attempt, push_config, log)
        if job is None:
            message = f"waiting for a build slot ({self.settings.max_parallel_builds} builds run at once)"
            return Outcome(self._progress(current, Phase.QUEUED, "Queued", message, generation, plan.hash))
        outcome = self._building(attempt, job)
        if created:
            outcome.events.append(("Normal", "BuildStarted", f"building {plan.destination} in Job "
                                   f"{plan.namespace}/{job['metadata']['name']}"))
        return outcome

    async def _followed_job(self, attempt: Attempt) -> dict[str, Any] | None:
        """The Job status.buildJob names, while it builds this content: a retry's Job name includes the
        references it saw, which may have changed since it started; the build in flight still decides."""
        job = await self._read_followed(attempt)
        return job if builds.builds_plan(job, attempt.plan) else None

    async def _read_followed(self, attempt: Attempt) -> dict[str, Any] | None:
        followed = attempt.current.get("buildJob") or {}
        if followed.get("namespace") != attempt.plan.namespace or not followed.get("name"):
            return None
        return await kube.read_job(attempt.plan.namespace, str(followed["name"]))

    def _building(self, attempt: Attempt, job: dict[str, Any]) -> Outcome:
        name, plan = job["metadata"]["name"], attempt.plan
        patch = self._progress(attempt.current, Phase.BUILDING, "Building", f"build Job {plan.namespace}/{name} "
                               f"is building {plan.destination}", attempt.generation, plan.hash)
        patch["buildJob"] = {"namespace": plan.namespace, "name": name}
        if attempt.current.get("phase") != Phase.BUILDING or attempt.current.get("buildJob") != patch["buildJob"]:
            patch["buildReferences"] = attempt.references  # what this build was started with
        return Outcome(patch)

    async def _finished(self, attempt: Attempt, job: dict[str, Any], push_credentials: Credentials | None,
                        log: logging.Logger) -> Outcome:
        plan, current, generation = attempt.plan, attempt.current, attempt.generation
        name = job["metadata"]["name"]
        pods = await kube.job_pods(plan.namespace, name)
        log_text = None
        if pods and attempt.increment:  # each container's log in turn: tools (a conda edit's), install, push
            pod_spec = pods[0]["spec"]
            containers = [c["name"] for c in [*pod_spec.get("initContainers", []), *pod_spec["containers"]]]
            logs = [await kube.pod_log_tail(plan.namespace, pods[0]["metadata"]["name"], jobstate.BUILD_LOG_LINES,
                                            container) for container in containers]
            log_text = "".join(text for text in logs if text) or None
        elif pods:
            log_text = await kube.pod_log_tail(plan.namespace, pods[0]["metadata"]["name"], jobstate.BUILD_LOG_LINES)
        if jobstate.job_succeeded(job):
            reported = jobstate.digest_from_pods(pods)
            digest = await self.registry.digest(plan.destination, push_credentials, keep=True)
            if digest is None:
                message = f"build Job {name} succeeded but {plan.destination} is not in the registry"
                return Outcome(status.failed(current, "ImageMissing", message, generation, plan.hash),
                               [("Warning", "ImageMissing", message)])
            if reported and reported != digest:
                message = f"builder reported {reported} but the registry now serves {digest} for the tag"
                return Outcome(status.failed(current, "DigestMismatch", message, generation, plan.hash),
                               [("Warning", "DigestMismatch", message)])
            self._observe_duration(job)
            reason, built = "BuildSucceeded", f"built by Job {plan.namespace}/{name}"
            if attempt.increment:
                reason, built = incremental.INCREMENTAL_REASON, (f"{attempt.increment.summary} into version "
                                                     f"{current.get('version')}'s image by Job {plan.namespace}/{name}")
            return await self._ready(attempt, digest, reason, built, push_credentials,
                                     build_log=jobstate.kept_log(log_text))
        message = jobstate.failure_message(job, pods, log_text)
        retries = current.get("transientRetries") or 0
        if retries < MAX_TRANSIENT_RETRIES and jobstate.looks_transient(message):
            wait = (f"build Job {name} could not reach a registry; retry {retries + 1} of "
                    f"{MAX_TRANSIENT_RETRIES} once it answers: {message}")
            patch = self._progress(current, Phase.PENDING, "RegistryUnavailable", wait, generation, plan.hash)
            patch["transientRetries"] = retries + 1
            return Outcome(patch, [("Warning", "RegistryUnavailable", wait.splitlines()[0])])
        if attempt.increment and attempt.full_plan:
            return await self._fall_back(attempt, attempt.full_plan, name, log_text or message, log)
        reason = (jobstate.job_condition(job, "Failed") or {}).get("reason", "BuildFailed")
        if current.get("failedGeneration") != generation or current.get("phase") != Phase.FAILED:
            metrics.BUILDS_FAILED.labels(reason).inc()
        patch = status.failed(current, "BuildFailed", message, generation, plan.hash)
        patch["buildJob"] = {"namespace": plan.namespace, "name": name}
        patch["failedBuildLog"] = jobstate.kept_log(log_text)
        # The references this build started with: fixed since (even while it ran), they earn a retry.
        patch["failedReferences"] = current.get("buildReferences", attempt.references)
        if attempt.token:
            patch["rebuildToken"] = attempt.token
        return Outcome(patch, [("Warning", "BuildFailed", message.splitlines()[0])])

    async def _fall_back(self, attempt: Attempt, full_plan: builds.BuildPlan, job_name: str, log_text: str,
                         log: logging.Logger) -> Outcome:
        """An incremental build failed: a full build of the same content follows at once, and decides. The
        shortcut can fail where a build from scratch would not (the image's user cannot write where conda
        installed, a conda package replaced files pip owned, a python py-rattler cannot run on), and a build that
        fails in full says why in a full build's terms. The status remembers the content, so later reconciles
        do not plan the increment again; the event says why, from kenv-delta.py's last `kenv:` line."""
        lines = [line.strip() for line in log_text.splitlines() if line.strip()]
        said = [line.removeprefix("kenv: ") for line in lines if line.startswith("kenv: ")]
        why = (said or lines or ["no log"])[-1].removesuffix("; a full build follows")
        outcome = await self._converge(replace(attempt, plan=full_plan, increment=None, full_plan=None), log)
        outcome.status["incrementalFailed"] = attempt.context.hash
        outcome.status["transientRetries"] = None  # the full build has its own registry retries
        if self.fell_back.get(attempt.uid) != job_name:
            self.fell_back[attempt.uid] = job_name
            log.info("%s: incremental build Job %s failed (%s); a full build follows", attempt.ref.display, job_name,
                     why)
            metrics.BUILDS_FAILED.labels("IncrementalBuildFailed").inc()
            outcome.events.insert(0, ("Warning", "IncrementalBuildFailed",
                                      f"incremental build Job {job_name} failed: {why}; a full build follows"))
        return outcome

    async def _ready(self, attempt: Attempt, digest: str, reason: str, message: str,
                     push_credentials: Credentials | None = None, image: str | None = None,
                     build_log: str | None = None) -> Outcome:
        """Ready with `digest` pushed under the plan's tag (or `image`, the current one, for a new definition of
        the same image: the destination repository may have been reconfigured since it was built)."""
        current, plan = attempt.current, attempt.plan
        image = image or f"{plan.destination.rsplit(':', 1)[0]}@{digest}"
        rebuilt = attempt.forced and reason == "BuildSucceeded"
        number = current.get("version")
        if versions.needs_new_version(current, image, attempt.runtime_hash, rebuilt):
            if rebuilt:
                reason = "BaseImageMoved" if str(attempt.token).startswith(BASE_TOKEN_PREFIX) else "Rebuilt"
            if push_credentials is None:
                push_credentials = await self._push_credentials(plan)
            snapshot = await self.versions.record(NewVersion(
                ref=attempt.ref, uid=attempt.uid, definition=attempt.definition, image=image,
                content_hash=plan.hash, runtime_hash=attempt.runtime_hash, reason=reason,
                generation=attempt.generation, build_log=build_log,
                locked=LOCK_SCRIPT in attempt.context.files), current, push_credentials)
            number = snapshot.number
        patch = status.ready(current, image=image, digest=digest, content_hash=plan.hash, version=number,
                             runtime_hash=attempt.runtime_hash, generation=attempt.generation, reason=reason,
                             message=message)
        if attempt.token:
            patch["rebuildToken"] = attempt.token
        if reason in ("BuildSucceeded", "IncrementalBuild", "Rebuilt", "BaseImageMoved") and \
                current.get("image") != image and \
                self.counted_ready.get(attempt.uid) != image:
            self.counted_ready[attempt.uid] = image
            metrics.BUILDS_SUCCEEDED.inc()
        events = [] if number == current.get("version") else [
            ("Normal", "Ready", f"version {number} is {image} ({message})")]
        return Outcome(patch, events)

    @staticmethod
    def _observe_duration(job: dict[str, Any]) -> None:
        job_status = job.get("status") or {}
        start, end = job_status.get("startTime"), job_status.get("completionTime")
        if start and end:
            parse = datetime.datetime.fromisoformat
            metrics.BUILD_DURATION.observe((parse(str(end)) - parse(str(start))).total_seconds())

    async def _start_build(self, attempt: Attempt, push_config: dict[str, Any],
                           log: logging.Logger) -> tuple[dict[str, Any] | None, bool]:
        """Create the build objects if a slot is free: (job, created); (None, False) means queued."""
        ref, spec, plan = attempt.ref, attempt.spec, attempt.plan
        credentials = builds.BuildCredentials(
            docker_config=builds.merge_docker_configs(await self.base_registry_config(ref, spec), push_config),
            conda_auth=await self.conda_auth(ref, spec))
        async with self.build_slots:
            existing = await kube.read_job(plan.namespace, plan.job_name)  # a concurrent reconcile won
            if existing is not None:
                return existing, False
            running = [j for j in await kube.list_jobs(plan.namespace, f"{builds.LABEL_ROLE}=build")
                       if not jobstate.job_finished(j)]
            metrics.ACTIVE_BUILDS.set(len(running))
            if len(running) >= self.settings.max_parallel_builds:
                self.queued.add(ref.display)
                metrics.BUILD_QUEUE.set(len(self.queued))
                return None, False
            self.queued.discard(ref.display)
            metrics.BUILD_QUEUE.set(len(self.queued))
            job, owned = await self._create_build_objects(attempt, credentials)
        owner = builds.owner_reference(job)
        for kind, name in owned:
            await kube.set_owner(kind, plan.namespace, name, owner)
        metrics.BUILDS_STARTED.labels("incremental" if attempt.increment else spec.build.builder.value).inc()
        log.info("started build Job %s/%s for %s", plan.namespace, plan.job_name, ref.display)
        return job, True

    async def _create_build_objects(self, attempt: Attempt, credentials: builds.BuildCredentials
                                    ) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        """The context ConfigMap, the credential Secrets and the Job mounting them: (job, (kind, name) of the
        objects the Job is to own)."""
        plan = attempt.plan
        context = attempt.context
        if attempt.increment:
            context = BuildContext(incremental.context_files(context))
        config_map = await kube.create(builds.build_context_config_map(plan, context, attempt.ca_bundle))
        secrets = credentials.secrets(plan)
        for secret in secrets:
            await kube.create(secret)
        requested_by = f"{attempt.ref.kind}/{attempt.ref.display}"
        has_docker_config = bool(credentials.docker_config["auths"])
        package_cache = builds.may_share_package_cache(attempt.context.files, bool(credentials.conda_auth))
        if attempt.increment:
            body = incremental.increment_job(plan, attempt.increment, attempt.spec, self.settings,
                                             requested_by=requested_by, context_files=list(config_map["data"]),
                                             has_docker_config=has_docker_config, has_ca=bool(attempt.ca_bundle),
                                             package_cache=package_cache)
        else:
            body = builds.build_job(
                plan, attempt.spec.build, self.settings, requested_by=requested_by,
                context_files=list(config_map["data"]), has_docker_config=has_docker_config,
                conda_auth_secret=plan.conda_auth_secret if credentials.conda_auth else None,
                has_ca=bool(attempt.ca_bundle), package_cache=package_cache)
        job = await kube.create(body)
        owned = [("ConfigMap", config_map["metadata"]["name"])]
        return job, owned + [("Secret", secret["metadata"]["name"]) for secret in secrets]

    def _credentials_key(self, ref: EnvironmentRef, spec: EnvironmentSpec) -> str:
        """Builds are shared by content, but one that fetches with channel credentials is its own: another
        Environment of the same content with other credentials (or none) must not follow its Job and its 401."""
        credentials = spec.conda.channel_credentials if spec.conda else []
        if not credentials:
            return ""
        namespace = ref.references_namespace(self.settings.build_namespace)
        return "credentials:" + ",".join(f"{c.host}={namespace}/{c.secret_name}" for c in credentials)

    async def conda_auth(self, ref: EnvironmentRef, spec: EnvironmentSpec) -> dict[str, Any]:
        """rattler's authentication file for spec.conda.channelCredentials ({} without), from their Secrets."""
        credentials = spec.conda.channel_credentials if spec.conda else []
        namespace = ref.references_namespace(self.settings.build_namespace)
        names = dict.fromkeys(credential.secret_name for credential in credentials)
        read = {name: await kube.read_secret_with_labels(namespace, name) for name in names}
        secrets = {name: found[0] if found else None for name, found in read.items()}
        marked = [name for name, found in read.items() if found and found[1].get(condaauth.CREDENTIALS_LABEL) == "true"]
        try:
            return condaauth.conda_auth_file(credentials, secrets, namespace, marked)
        except condaauth.CredentialError as problem:
            raise MissingReference(str(problem)) from None

    async def base_registry_config(self, ref: EnvironmentRef, spec: EnvironmentSpec) -> dict[str, Any]:
        registry = spec.docker.base_image_registry
        if registry is None:
            return {"auths": {}}
        namespace = ref.references_namespace(self.settings.build_namespace)
        data = await kube.read_secret(namespace, registry.secret_name)
        if data is None:
            raise MissingReference(f"spec.docker.baseImageRegistry.secretName: Secret {namespace}/"
                                   f"{registry.secret_name} not found")
        if ".dockerconfigjson" in data:
            loaded: dict[str, Any] = json.loads(data[".dockerconfigjson"])
            return loaded
        if "username" in data and "password" in data:
            return builds.basic_auth_config(registry.address, data["username"], data["password"])
        raise MissingReference(f"spec.docker.baseImageRegistry.secretName: Secret {namespace}/"
                               f"{registry.secret_name} needs .dockerconfigjson or username and password keys")


def base_rebuild_token(digest: str) -> str:
    return BASE_TOKEN_PREFIX + hashlib.sha256(digest.encode()).hexdigest()[:12]
