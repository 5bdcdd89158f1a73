"""Conditions and phases: the kstatus vocabulary every reconciler writes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from mlplane.crds.base import Condition, ConditionStatus, ConditionType

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def set_condition(
    conditions: list[Condition],
    type_: ConditionType,
    status: ConditionStatus,
    reason: str,
    message: str = "",
    *,
    generation: int | None,
) -> list[Condition]:
    """Conditions with `type_` set; lastTransitionTime moves only when the status flips. The
    generation it was computed from is always said: kstatus readers (Argo CD, kubectl wait) take
    a condition without it for one about the newest spec."""
    previous = next((c for c in conditions if c.type == type_), None)
    updated = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message[:4096],
        last_transition_time=(
            previous.last_transition_time if previous and previous.status == status else now()
        ),
        observed_generation=generation,
    )
    return [c for c in conditions if c.type != type_] + [updated]


def condition(conditions: list[Condition], type_: ConditionType) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to emit on the resource (or print, under `mlplane run`)."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


def invalid_spec_status(problems: list[str], generation: int | None) -> dict[str, object]:
    """The status patch for an object the API server took but mlplane cannot run."""
    message = "; ".join(problems)
    failed = set_condition(
        [], ConditionType.FAILED, "True", "InvalidSpec", message, generation=generation
    )
    return {
        "phase": "Failed",
        "observedGeneration": generation,
        "conditions": [c.to_dict() for c in failed],
    }
