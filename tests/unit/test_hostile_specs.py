"""`mlplane validate` refuses every spec of the hostile corpus, naming the field."""

import pytest
from hostile_specs import HOSTILE_SPECS, Hostile

from mlplane.crds.validation import validate_object


def test_the_corpus_is_large_and_each_case_distinct() -> None:
    assert len(HOSTILE_SPECS) >= 40
    assert len({case.id for case in HOSTILE_SPECS}) == len(HOSTILE_SPECS)


@pytest.mark.parametrize("case", HOSTILE_SPECS, ids=lambda case: case.id)
def test_validate_refuses_naming_the_field(case: Hostile) -> None:
    problems = validate_object(case.doc)
    assert problems, "accepted"
    fields = [problem.field for problem in problems]
    assert any(field.startswith(case.field) for field in fields), fields
