"""What the API server cannot see through (free-form hyperparameters and params, tuning choices)
reaches the real operator: each hostile spec ends Failed with InvalidSpec naming the field before
anything runs, and the operator never restarts."""

from __future__ import annotations

import copy

import pytest
from hostile_specs import HOSTILE_SPECS

from mlplane.crds import KINDS

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

PAST_THE_API_SERVER = [case for case in HOSTILE_SPECS if not case.api_server]


def test_the_operator_refuses_what_the_api_server_cannot_see(resources) -> None:
    assert len(PAST_THE_API_SERVER) >= 4
    applied = []
    for number, case in enumerate(PAST_THE_API_SERVER):
        doc = copy.deepcopy(case.doc)
        doc["metadata"]["name"] = f"hostile-{number}"
        resources.apply(doc)  # the API server takes it: its schema cannot type these fields
        applied.append((KINDS[doc["kind"]].plural, doc["metadata"]["name"], case.field))
    for plural, name, field in applied:
        status = resources.wait_for_phase(plural, name, {"Failed"}, 60)["status"]
        failed = next(c for c in status["conditions"] if c["type"] == "Failed")
        assert failed["reason"] == "InvalidSpec"
        assert failed["message"].startswith(field), failed["message"]
        assert "ray" not in status  # nothing was launched
    assert resources.operator.process.poll() is None  # still the first operator process
