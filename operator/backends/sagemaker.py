"""The `sagemaker` target: a ModelDeployment as a SageMaker Model, EndpointConfig and Endpoint.

Each reconcile reads the endpoint (DescribeEndpoint) and takes at most one step towards the spec:
create it; replace a Failed one whose config is outdated; UpdateEndpoint to a new EndpointConfig
(blue/green, as spec.sagemaker.deployment says) when the model or instance settings changed;
UpdateEndpointWeightsAndCapacities when only capacity did; sync the endpoint's tags. What
SageMaker reports is mirrored onto the status, its FailureReason included.

Nothing is remembered outside the resource and AWS. Names are derived (sagemaker_render), so an
operator restarted anywhere finds what it created; ownership is the `mlplane.dev/uid` tag, so an
endpoint that belongs to someone else is never updated or deleted unless the resource is annotated
`mlplane.dev/adopt: "true"`. `status.endpoint.targetConfigName` tells a rolled-back update (the
endpoint left on the old config with a FailureReason) from a spec change still to deploy, so a
rollback is reported, not retried in a loop.

Errors follow ACK's conditions, with the cause spelled out: Synced=False while AWS lags the spec
(throttling and 5xx are retried by botocore, then on the next reconcile); Terminal=True for
what only a person can fix (AccessDenied, validation errors, a Failed endpoint, a rollback), with
AWS's own message. A terminal AWS error is retried after TERMINAL_RETRY or a spec change.

Credentials and clients are mlplane.operator.backends.aws's; packaging the model is
sagemaker_package's.
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from mlplane.crds.base import ConditionType
from mlplane.crds.modeldeployment import (
    Endpoint,
    ModelDeployment,
    ReplicaCounts,
    SageMakerServing,
    Traffic,
)
from mlplane.operator.backends import sagemaker_render as render
from mlplane.operator.backends.aws import (
    AwsClients,
    AwsCredentials,
    ClientFactory,
    CredentialsUnavailable,
    SecretReader,
    boto3_clients,
    classify,
    missing,
    no_secrets,
)
from mlplane.operator.backends.sagemaker_package import ModelPackager
from mlplane.operator.modeldeployment import (
    DeletionPending,
    ModelNotFound,
    ModelPending,
    Phase,
    Step,
)
from mlplane.operator.status import Event, condition, now, set_condition
from mlplane.serving.config import ModelRef

log = logging.getLogger(__name__)

ADOPT_ANNOTATION = "mlplane.dev/adopt"
DELETION_POLICY_ANNOTATION = "mlplane.dev/deletion-policy"
TERMINAL_RETRY = timedelta(minutes=10)
"""How long an AWS error that needs a person is left alone (unless the spec changes)."""
DELETE_RETRY_SECONDS = 10.0

# EndpointStatus values during which SageMaker is changing the endpoint: no update, no delete.
MODIFYING = frozenset({"Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting"})
# ...during which it answers requests.
SERVING = frozenset(
    {"InService", "Updating", "SystemUpdating", "RollingBack", "UpdateRollbackFailed"}
)


class NoArtifactBucket(ValueError):
    """Neither the spec nor the operator names the S3 bucket for model.tar.gz."""


class _Refused(RuntimeError):
    """A step the operator must not take (the endpoint name belongs to someone else)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Desired:
    """The Model and EndpointConfig the spec asks for now."""

    model: dict[str, Any]
    config: dict[str, Any]
    image: str
    model_data_url: str

    @property
    def config_name(self) -> str:
        return self.config["EndpointConfigName"]

    @property
    def model_name(self) -> str:
        return self.model["ModelName"]


@dataclass(frozen=True)
class Verdict:
    """What one DescribeEndpoint means for phase and conditions (see `assess`)."""

    phase: Phase
    reason: str
    message: str
    ready: bool
    progressing: bool = False
    synced: bool = False
    terminal: bool = False


def assess(
    view: dict[str, Any] | None,
    desired_config: str,
    capacity_ok: bool,
    rolled_back: bool,
    url: str | None,
) -> Verdict:
    """Phase and conditions from the endpoint as SageMaker describes it. Pure: the whole mapping
    of EndpointStatus onto the ModelDeployment vocabulary is here."""
    if view is None:
        return Verdict("Deploying", "Creating", "creating the endpoint", False, progressing=True)
    state = view["EndpointStatus"]
    why = view.get("FailureReason") or ""
    name = view["EndpointName"]
    in_use = view.get("EndpointConfigName")
    if state == "Creating":
        message = f"SageMaker is creating endpoint {name}"
        return Verdict("Deploying", state, message, False, progressing=True)
    if state == "Deleting":
        message = f"SageMaker is deleting endpoint {name} to replace it"
        return Verdict("Deploying", state, message, False, progressing=True)
    if state == "Failed":
        message = f"endpoint {name} failed: {why or 'SageMaker gave no reason'}"
        return Verdict("Failed", "EndpointFailed", message, False, terminal=True)
    if state == "OutOfService":
        return Verdict("Degraded", state, f"endpoint {name} is out of service", False)
    if state == "RollingBack":
        message = f"SageMaker is rolling endpoint {name} back: {why or 'the update failed'}"
        return Verdict("RollingBack", state, message, True, progressing=True)
    if state == "UpdateRollbackFailed":
        message = f"endpoint {name} serves a mix of configs after a failed rollback: {why}"
        return Verdict("Degraded", state, message, True, terminal=True)
    if state in ("Updating", "SystemUpdating"):
        what = "updating" if state == "Updating" else "maintaining"
        message = f"SageMaker is {what} endpoint {name}"
        return Verdict("Progressing", state, message, True, progressing=True)
    if in_use != desired_config and rolled_back:
        message = (
            f"the update to {desired_config} was rolled back: {why}; endpoint {name} serves "
            f"{in_use} until the spec changes"
        )
        return Verdict("Degraded", "UpdateRolledBack", message, True, terminal=True)
    if in_use != desired_config:
        message = f"updating endpoint {name} to {desired_config}"
        return Verdict("Progressing", "Updating", message, True, progressing=True)
    if not capacity_ok:
        message = f"changing the capacity of endpoint {name}"
        return Verdict("Progressing", "Scaling", message, True, progressing=True)
    return Verdict("Available", state, f"serving at {url}", True, synced=True)


class SageMakerEndpoints:
    """The ModelDeployment reconciler's delegate for `target: sagemaker`."""

    def __init__(
        self,
        tracking_uri: str,
        secrets: SecretReader = no_secrets,
        artifact_bucket: str | None = None,
        endpoint_url: str | None = None,
        allowed_endpoint_urls: Sequence[str] = (),
        clients: ClientFactory = boto3_clients,
        clock: Callable[[], datetime] = now,
        mlflow_version: str = importlib.metadata.version("mlflow"),
    ) -> None:
        """`artifact_bucket` and `endpoint_url` are the operator's defaults for the spec fields;
        without an endpoint URL boto3 finds AWS (or $AWS_ENDPOINT_URL) itself. A spec may name
        only an endpoint URL that starts with one of `allowed_endpoint_urls`: the operator sends
        its signed requests, and a tenant's credentials, wherever the URL points."""
        self.secrets = secrets
        self.artifact_bucket = artifact_bucket
        self.endpoint_url = endpoint_url
        self.allowed_endpoint_urls = tuple(url.rstrip("/") for url in allowed_endpoint_urls)
        self.clients = clients
        self.clock = clock
        self.mlflow_version = mlflow_version
        self.packager = ModelPackager(tracking_uri)
        self._cache: OrderedDict[tuple[Any, ...], AwsClients] = OrderedDict()
        self._lock = threading.Lock()

    # -- reconcile -----------------------------------------------------------------------------

    def reconcile(
        self, deployment: ModelDeployment, step: Step, resolve: Callable[[], ModelRef]
    ) -> None:
        serving = _serving(deployment)
        names = render.names(deployment)
        status = step.status
        status.endpoint = (status.endpoint or Endpoint()).model_copy(
            update={"name": names.endpoint, "region": serving.region}
        )
        if invalid := self._endpoint_problem(serving):
            self._blocked(step, deployment, "InvalidSpec", invalid, terminal=True)
            return
        if self._backing_off(deployment, step):
            return
        status.endpoint.retry_after = None
        try:
            model = resolve()
        except (ModelPending, ModelNotFound) as problem:
            self._unresolved(step, deployment, problem)
            return
        credentials: AwsCredentials | None = None
        try:
            credentials = self._credentials(deployment)
            self._converge(step, deployment, self._clients(serving, credentials), model)
        except ModelNotFound as problem:
            self._unresolved(step, deployment, problem)
        except CredentialsUnavailable as problem:
            self._blocked(step, deployment, "CredentialsUnavailable", str(problem), terminal=False)
        except (render.ImageUnknown, NoArtifactBucket) as problem:
            self._blocked(step, deployment, "InvalidSpec", str(problem), terminal=True)
        except _Refused as problem:
            self._blocked(step, deployment, problem.reason, str(problem), terminal=True)
        except (ClientError, BotoCoreError) as error:
            reason, message, terminal = classify(error)
            if credentials:
                message = credentials.scrub(message)
            self._blocked(step, deployment, reason, message, terminal)

    def _converge(
        self, step: Step, deployment: ModelDeployment, aws: AwsClients, model: ModelRef
    ) -> None:
        endpoint = step.status.endpoint
        assert endpoint is not None and endpoint.name is not None
        view = _describe(aws.sagemaker, endpoint.name)
        if view is not None and view["EndpointArn"] != endpoint.arn:
            self._claim(aws.sagemaker, deployment, view, step)
        desired = self._desired(aws, deployment, model)
        in_use = view.get("EndpointConfigName") if view else None
        rolled_back = (
            endpoint.target_config_name == desired.config_name
            and in_use != desired.config_name
            and bool(view and view.get("FailureReason"))
        )
        view = self._act(step, deployment, aws.sagemaker, view, desired, model, rolled_back)
        was = step.status.phase
        self._report(step, deployment, view, desired, model, rolled_back)
        if step.status.phase == "Available" and was != "Available":
            self._clean_up(aws, deployment, keep=desired)

    def _act(
        self,
        step: Step,
        deployment: ModelDeployment,
        sm: Any,
        view: dict[str, Any] | None,
        desired: Desired,
        model: ModelRef,
        rolled_back: bool,
    ) -> dict[str, Any] | None:
        """The one step towards the spec this reconcile takes, if any; the endpoint after it."""
        serving = _serving(deployment)
        endpoint = step.status.endpoint
        assert endpoint is not None and endpoint.name is not None
        name = endpoint.name
        state = view["EndpointStatus"] if view else None
        in_use = view.get("EndpointConfigName") if view else None
        if view is None:
            _create(sm.create_model, desired.model)
            _create(sm.create_endpoint_config, desired.config)
            _create(sm.create_endpoint, render.create_endpoint(deployment, desired.config_name))
            endpoint.tags = dict(serving.tags)
            self._target(endpoint, desired)
            message = f"creating endpoint {name} ({desired.config_name})"
            step.events.append(Event("Normal", "Creating", message))
        elif state == "Failed" and in_use != desired.config_name:
            # A failed endpoint cannot be updated: delete it, then create it anew from the spec.
            sm.delete_endpoint(EndpointName=name)
            message = f"deleting failed endpoint {name} to recreate it"
            step.events.append(Event("Normal", "Replacing", message))
        elif state in MODIFYING or state == "Failed" or rolled_back:
            return view  # SageMaker is busy, or waits for a person (or a spec change)
        elif in_use != desired.config_name:
            _create(sm.create_model, desired.model)
            _create(sm.create_endpoint_config, desired.config)
            sm.update_endpoint(**render.update_endpoint(deployment, desired.config_name))
            self._target(endpoint, desired)
            message = f"deploying {desired.config_name} ({model.uri})"
            step.events.append(Event("Normal", "Updating", message))
        else:
            self._target(endpoint, desired)
            if render.capacity_matches(serving, view["ProductionVariants"]):
                self._sync_tags(sm, deployment, view["EndpointArn"], endpoint)
                return view
            sm.update_endpoint_weights_and_capacities(**render.update_capacity(deployment))
            step.events.append(Event("Normal", "Scaling", _capacity(serving)))
        return _describe(sm, name)

    def _target(self, endpoint: Endpoint, desired: Desired) -> None:
        endpoint.target_config_name = desired.config_name
        endpoint.model_name = desired.model_name
        endpoint.model_data_url = desired.model_data_url
        endpoint.image = desired.image

    def _desired(self, aws: AwsClients, deployment: ModelDeployment, model: ModelRef) -> Desired:
        serving = _serving(deployment)
        if model.uri.startswith("s3://") and model.uri.endswith(".tar.gz"):
            url, layouts = model.uri, frozenset[str]()  # packaged already; its layout is unknown
        else:
            bucket = serving.artifact_bucket or self.artifact_bucket
            if not bucket:
                raise NoArtifactBucket(
                    "spec.sagemaker.artifactBucket: unset, and the operator has no "
                    "sagemaker_artifact_bucket for model.tar.gz"
                )
            key = render.artifact_key(deployment, model.uri)
            layouts = self.packager.ensure(aws.s3, bucket, key, model.uri)
            url = f"s3://{bucket}/{key}"
        image = render.choose_image(serving, layouts, self.mlflow_version)
        model_body = render.create_model(deployment, image, url)
        config = render.create_endpoint_config(deployment, model_body["ModelName"])
        return Desired(model_body, config, image.uri, url)

    def _claim(
        self, sm: Any, deployment: ModelDeployment, view: dict[str, Any], step: Step
    ) -> None:
        """Make sure an endpoint not known from status is ours: created by this resource (an
        operator that died before writing status), or adopted on request."""
        arn = view["EndpointArn"]
        owner = _tags(sm, arn)
        if owner.get(render.UID_TAG) == deployment.metadata.uid:
            return
        if deployment.metadata.annotations.get(ADOPT_ANNOTATION) != "true":
            who = (
                f"ModelDeployment {owner.get('mlplane.dev/namespace')}/"
                f"{owner.get('mlplane.dev/name')}"
                if render.UID_TAG in owner
                else "something other than this ModelDeployment"
            )
            raise _Refused(
                "EndpointNameTaken",
                f"SageMaker endpoint {view['EndpointName']} already exists and was created by "
                f'{who}; annotate this resource mlplane.dev/adopt: "true" to take it over',
            )
        sm.add_tags(ResourceArn=arn, Tags=render.tag_list(render.owner_tags(deployment)))
        step.events.append(
            Event("Normal", "Adopted", f"took over existing endpoint {view['EndpointName']}")
        )

    def _sync_tags(
        self, sm: Any, deployment: ModelDeployment, arn: str, endpoint: Endpoint
    ) -> None:
        """Apply spec.sagemaker.tags to the live endpoint in place, against the tags last
        applied (status.endpoint.tags): tags set by others are left alone. EndpointConfigs and
        Models keep the tags they were created with."""
        wanted = _serving(deployment).tags
        if endpoint.tags == wanted:
            return
        applied = endpoint.tags or {}
        stale = [k for k in applied if k not in wanted]
        if stale:
            sm.delete_tags(ResourceArn=arn, TagKeys=stale)
        changed = {k: v for k, v in wanted.items() if applied.get(k) != v}
        if changed:
            sm.add_tags(ResourceArn=arn, Tags=render.tag_list(changed))
        endpoint.tags = dict(wanted)

    def _clean_up(self, aws: AwsClients, deployment: ModelDeployment, keep: Desired) -> None:
        """Delete this deployment's EndpointConfigs, Models and model.tar.gz files that the live
        endpoint no longer uses (left behind by updates)."""
        deleted = _delete_owned(aws, deployment, self._bucket(deployment), keep)
        if deleted:
            log.info("%s: deleted unused %s", deployment.metadata.name, ", ".join(deleted))

    # -- status --------------------------------------------------------------------------------

    def _report(
        self,
        step: Step,
        deployment: ModelDeployment,
        view: dict[str, Any] | None,
        desired: Desired,
        model: ModelRef,
        rolled_back: bool,
    ) -> None:
        serving = _serving(deployment)
        status = step.status
        endpoint = status.endpoint
        assert endpoint is not None and endpoint.name is not None
        url = render.invocation_url(
            serving.region, serving.endpoint_url or self.endpoint_url, endpoint.name
        )
        capacity_ok = True
        if view is None:
            endpoint.arn = endpoint.status = endpoint.config_name = endpoint.failure_reason = None
        else:
            endpoint.arn = view["EndpointArn"]
            endpoint.status = view["EndpointStatus"]
            endpoint.config_name = view.get("EndpointConfigName")
            endpoint.failure_reason = view.get("FailureReason")
            variants = view.get("ProductionVariants") or []
            capacity_ok = render.capacity_matches(serving, variants)
            status.replicas = _replicas(serving, variants, endpoint.status)
        verdict = assess(view, desired.config_name, capacity_ok, rolled_back, url)
        status.url = url if view is not None else None
        if endpoint.config_name == desired.config_name and endpoint.status in SERVING:
            status.traffic = [Traffic(uri=model.uri, version=model.version, percent=100)]
        self._conditions(step, deployment, verdict)
        step.phase(
            verdict.phase,
            verdict.reason,
            verdict.message,
            warning=verdict.phase in ("Failed", "Degraded", "RollingBack"),
        )

    def _conditions(self, step: Step, deployment: ModelDeployment, verdict: Verdict) -> None:
        generation = deployment.metadata.generation
        status = step.status
        ready_reason = "Serving" if verdict.ready else verdict.reason
        ready_message = f"serving at {status.url}" if verdict.ready else verdict.message
        for type_, value, reason, message in (
            (ConditionType.READY, verdict.ready, ready_reason, ready_message),
            (ConditionType.PROGRESSING, verdict.progressing, verdict.reason, verdict.message),
            (ConditionType.SYNCED, verdict.synced, verdict.reason, verdict.message),
            (ConditionType.TERMINAL, True, verdict.reason, verdict.message),
        ):
            if type_ == ConditionType.TERMINAL and not verdict.terminal:
                # As in ACK: present only while an error waits for a person.
                status.conditions = [c for c in status.conditions if c.type != type_]
                continue
            status.conditions = set_condition(
                status.conditions,
                type_,
                "True" if value else "False",
                reason,
                message,
                generation=generation,
            )

    def _blocked(
        self, step: Step, deployment: ModelDeployment, reason: str, message: str, terminal: bool
    ) -> None:
        """A step that could not be taken. What already serves keeps serving (Ready stays);
        terminal problems wait for a person, the rest are retried on the next reconcile."""
        status = step.status
        endpoint = status.endpoint
        assert endpoint is not None
        serving = endpoint.status in SERVING
        if terminal:
            endpoint.retry_after = self.clock() + TERMINAL_RETRY
        held: Phase = status.phase or "Deploying"
        phase: Phase = ("Degraded" if serving else "Failed") if terminal else held
        verdict = Verdict(
            phase, reason, message, serving, progressing=not terminal, terminal=terminal
        )
        self._conditions(step, deployment, verdict)
        step.phase(phase, reason, message, warning=True)
        if not terminal:  # no Event unless the phase changes: the log says why it lags
            log.warning("%s: %s: %s", deployment.metadata.name, reason, message)

    def _backing_off(self, deployment: ModelDeployment, step: Step) -> bool:
        """A terminal AWS error on this generation, not yet due for another try."""
        endpoint = step.status.endpoint
        terminal = condition(step.status.conditions, ConditionType.TERMINAL)
        return bool(
            endpoint
            and endpoint.retry_after
            and terminal
            and terminal.status == "True"
            and terminal.observed_generation == deployment.metadata.generation
            and self.clock() < endpoint.retry_after
        )

    def _unresolved(self, step: Step, deployment: ModelDeployment, problem: LookupError) -> None:
        """No model to deploy: the endpoint keeps what it serves; say what is missing."""
        pending = isinstance(problem, ModelPending)
        endpoint = step.status.endpoint
        serving = bool(endpoint and endpoint.status in SERVING)
        reason = "ModelPending" if pending else "ModelNotFound"
        phase: Phase
        if pending:
            phase = "Progressing" if serving else "Deploying"
        else:
            phase = "Degraded" if serving else "Failed"
        verdict = Verdict(
            phase, reason, str(problem), serving, progressing=pending, terminal=not pending
        )
        self._conditions(step, deployment, verdict)
        step.phase(phase, reason, str(problem), warning=not pending)

    # -- delete --------------------------------------------------------------------------------

    def delete(self, deployment: ModelDeployment) -> None:
        """Delete the endpoint, then every EndpointConfig, Model and model.tar.gz of this
        deployment; DeletionPending while SageMaker is still changing the endpoint. With the
        annotation `mlplane.dev/deletion-policy: retain`, everything stays."""
        name = deployment.metadata.name
        if deployment.metadata.annotations.get(DELETION_POLICY_ANNOTATION) == "retain":
            log.info("%s: deletion policy retain: SageMaker resources left in place", name)
            return
        serving = _serving(deployment)
        if self._endpoint_problem(serving):
            return  # refused before anything was created there
        endpoint = render.names(deployment).endpoint
        keep = (
            "; annotate mlplane.dev/deletion-policy: retain to delete the resource and keep "
            "what it created"
        )
        credentials: AwsCredentials | None = None
        try:
            credentials = self._credentials(deployment)
            aws = self._clients(serving, credentials)
            view = _describe(aws.sagemaker, endpoint)
            if view and _tags(aws.sagemaker, view["EndpointArn"]).get(render.UID_TAG) == (
                deployment.metadata.uid
            ):
                state = view["EndpointStatus"]
                if state in MODIFYING - {"Deleting"}:
                    raise DeletionPending(
                        f"endpoint {endpoint} is {state}; it is deleted once SageMaker is done",
                        DELETE_RETRY_SECONDS,
                    )
                if state != "Deleting":
                    aws.sagemaker.delete_endpoint(EndpointName=endpoint)
                    log.info("%s: deleting endpoint %s", name, endpoint)
                if _describe(aws.sagemaker, endpoint) is not None:
                    raise DeletionPending(
                        f"waiting for SageMaker to delete endpoint {endpoint}", DELETE_RETRY_SECONDS
                    )
            deleted = _delete_owned(aws, deployment, self._bucket(deployment), keep=None)
            log.info("%s: deleted %s", name, ", ".join(deleted) or "nothing else")
        except CredentialsUnavailable as problem:
            raise DeletionPending(f"{problem}{keep}", DELETE_RETRY_SECONDS * 6) from None
        except (ClientError, BotoCoreError) as error:
            _, message, terminal = classify(error)
            if credentials:
                message = credentials.scrub(message)
            delay = DELETE_RETRY_SECONDS * (6 if terminal else 1)
            raise DeletionPending(f"{message}{keep if terminal else ''}", delay) from None

    # -- AWS access ----------------------------------------------------------------------------

    def _endpoint_problem(self, serving: SageMakerServing) -> str | None:
        url = serving.endpoint_url
        if url is None or any(
            url.rstrip("/") == allowed or url.startswith(f"{allowed}/")
            for allowed in self.allowed_endpoint_urls
        ):
            return None
        allowed = ", ".join(self.allowed_endpoint_urls) or "none"
        return (
            f"spec.sagemaker.endpointUrl: {url!r} is not an endpoint this operator may call "
            f"(sagemaker_endpoint_urls: {allowed}); ask the platform team to allow it"
        )

    def _bucket(self, deployment: ModelDeployment) -> str | None:
        return _serving(deployment).artifact_bucket or self.artifact_bucket

    def _credentials(self, deployment: ModelDeployment) -> AwsCredentials | None:
        ref = _serving(deployment).credentials_secret
        if ref is None:
            return None
        namespace = deployment.metadata.namespace or "default"
        data = self.secrets(namespace, ref.name)
        if data is None:
            raise CredentialsUnavailable(
                f"spec.sagemaker.credentialsSecret: Secret {ref.name!r} not found in namespace "
                f"{namespace!r}"
            )
        return AwsCredentials.from_secret(ref.name, data)

    def _clients(self, serving: SageMakerServing, credentials: AwsCredentials | None) -> AwsClients:
        """Clients per (region, endpoint, credentials), kept for reuse (a few dozen at most)."""
        key = (serving.region, serving.endpoint_url or self.endpoint_url, credentials)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        clients = self.clients(
            serving.region, serving.endpoint_url or self.endpoint_url, credentials
        )
        with self._lock:
            self._cache[key] = clients
            while len(self._cache) > 32:
                self._cache.popitem(last=False)
        return clients


def _serving(deployment: ModelDeployment) -> SageMakerServing:
    serving = deployment.spec.sagemaker
    assert serving is not None  # the API schema requires it with target sagemaker
    return serving


def _describe(sm: Any, name: str) -> dict[str, Any] | None:
    try:
        return sm.describe_endpoint(EndpointName=name)
    except ClientError as error:
        if missing(error):
            return None
        raise


def _create(operation: Callable[..., Any], body: dict[str, Any]) -> None:
    """CreateModel, CreateEndpointConfig or CreateEndpoint; an existing one of the same
    (derived) name is the same resource, made by an earlier try."""
    try:
        operation(**body)
    except ClientError as error:
        if "already exist" not in error.response.get("Error", {}).get("Message", ""):
            raise


def _tags(sm: Any, arn: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=arn).get("Tags", [])}


def _delete_owned(
    aws: AwsClients, deployment: ModelDeployment, bucket: str | None, keep: Desired | None
) -> list[str]:
    """Delete this deployment's EndpointConfigs, Models and model.tar.gz files except `keep`'s;
    what was deleted, by name. Names carry the UID, so nothing else ever matches."""
    prefix = render.names(deployment).base + "-"
    sm = aws.sagemaker
    deleted: list[str] = []
    listings = (
        (
            "list_endpoint_configs",
            "EndpointConfigs",
            "EndpointConfigName",
            "delete_endpoint_config",
        ),
        ("list_models", "Models", "ModelName", "delete_model"),
    )
    kept = {keep.config_name, keep.model_name} if keep else set()
    for lister, key, name_key, deleter in listings:
        for page in sm.get_paginator(lister).paginate(NameContains=prefix.rstrip("-")):
            for item in page[key]:
                name = item[name_key]
                if name.startswith(prefix) and name not in kept:
                    _ignore_missing(getattr(sm, deleter), **{name_key: name})
                    deleted.append(name)
    if bucket:
        artifacts = render.artifact_prefix(deployment)
        for page in aws.s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=artifacts
        ):
            for item in page.get("Contents", []):
                if keep is None or f"s3://{bucket}/{item['Key']}" != keep.model_data_url:
                    aws.s3.delete_object(Bucket=bucket, Key=item["Key"])
                    deleted.append(f"s3://{bucket}/{item['Key']}")
    return deleted


def _ignore_missing(operation: Callable[..., Any], **kwargs: Any) -> None:
    try:
        operation(**kwargs)
    except ClientError as error:
        if not missing(error):
            raise


def _replicas(
    serving: SageMakerServing, variants: list[dict[str, Any]], state: str | None
) -> ReplicaCounts | None:
    """Instances serving and wanted (serverless endpoints have none to count)."""
    if serving.serverless:
        return None
    variant = next((v for v in variants if v.get("VariantName") == serving.variant_name), None)
    if variant is None:
        return ReplicaCounts(ready=0, desired=serving.instance_count)
    ready = int(variant.get("CurrentInstanceCount") or 0) if state in SERVING else 0
    return ReplicaCounts(ready=ready, desired=int(variant.get("DesiredInstanceCount") or 0))


def _capacity(serving: SageMakerServing) -> str:
    if serving.serverless:
        return f"max concurrency to {serving.serverless.max_concurrency}"
    return f"instance count to {serving.instance_count}"
