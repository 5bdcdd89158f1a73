"""kopf handlers: thin wiring from watch events and timers to the reconcilers."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from mlplane.crds import KINDS
from mlplane.crds.base import GROUP, VERSION
from mlplane.crds.validation import validate_object
from mlplane.operator.config import OperatorConfig
from mlplane.operator.runtime import Runtime
from mlplane.operator.status import TERMINAL_PHASES, Event, invalid_spec_status

FINALIZER = f"{GROUP}/finalizer"


def _plain(body: Mapping[str, Any]) -> dict[str, Any]:
    """kopf's body views as the plain dict Pydantic validates."""
    return {key: body[key] for key in body}


def _active(status: Mapping[str, Any], **_: Any) -> bool:
    return status.get("phase") not in TERMINAL_PHASES


def _status_patch(status: Any) -> dict[str, Any]:
    wire = status.to_dict()
    wire.pop("kopf", None)  # kopf's own bookkeeping is written by kopf
    return wire


def _emit(body: Mapping[str, Any], events: list[Event]) -> None:
    for event in events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)


class Reconciler(Protocol):
    def reconcile(self, resource: Any) -> Any: ...

    def delete(self, resource: Any) -> None: ...


# The reconciler each kind is driven by (looked up on the started runtime), and whether its
# timer stops once the resource is done: runs end, a deployment is observed for as long as it lives.
KIND_RECONCILERS: dict[str, tuple[Callable[[Runtime], Reconciler], bool]] = {
    "TrainingJob": (lambda runtime: runtime.training, True),
    "TuningSweep": (lambda runtime: runtime.tuning, True),
    "ModelDeployment": (lambda runtime: runtime.serving, False),
}


def _register_kind(
    registry: kopf.OperatorRegistry,
    config: OperatorConfig,
    kind: str,
    reconciler_of: Callable[[Runtime], Reconciler],
    ends: bool,
) -> None:
    """One timer that steps the resource (while it is active, for runs), and a deletion handler."""
    model = KINDS[kind].resource
    plural = KINDS[kind].plural

    @kopf.timer(
        GROUP,
        VERSION,
        plural,
        id=f"observe-{plural}",
        interval=config.observe_interval_seconds,
        when=_active if ends else None,
        registry=registry,
    )
    def observe(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
        doc = _plain(body)
        problems = validate_object(doc)
        if problems:
            reasons = [f"{p.field}: {p.message}" for p in problems]
            patch.status.update(invalid_spec_status(reasons, body.meta.get("generation")))
            _emit(body, [Event("Warning", "InvalidSpec", "; ".join(reasons))])
            return
        step = reconciler_of(memo.runtime).reconcile(model.model_validate(doc))
        patch.status.update(_status_patch(step.status))
        _emit(body, step.events)

    @kopf.on.delete(GROUP, VERSION, plural, id=f"delete-{plural}", registry=registry)
    def delete(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        reconciler_of(memo.runtime).delete(model.model_validate(_plain(body)))


def _registered_model(namespace: str, name: str) -> str | None:
    """status.model.uri of a TrainingJob, for ModelDeployments that reference one."""
    try:
        job = client.CustomObjectsApi().get_namespaced_custom_object(
            GROUP, VERSION, namespace, KINDS["TrainingJob"].plural, name
        )
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return job.get("status", {}).get("model", {}).get("uri")


def build_registry(config: OperatorConfig) -> kopf.OperatorRegistry:
    """Handlers for every kind, registered on a fresh registry with the configured intervals."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        # Bookkeeping in status, not annotations: GitOps tools then see no drift.
        settings.persistence.progress_storage = kopf.StatusProgressStorage(
            field="status.kopf.progress"
        )
        settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(
            field="status.kopf.lastHandledConfiguration"
        )
        settings.persistence.finalizer = FINALIZER
        # Our reconcilers emit the Events users read; kopf's own handler chatter stays in logs.
        settings.posting.level = logging.WARNING
        memo.runtime = Runtime.start(config, job_models=_registered_model)

    for kind, (reconciler_of, ends) in KIND_RECONCILERS.items():
        _register_kind(registry, config, kind, reconciler_of, ends)

    return registry
