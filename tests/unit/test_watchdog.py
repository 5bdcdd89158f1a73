"""The operator's watchdog over its observe timers, and the API server retries that never end."""

import itertools

import pytest

from mlplane.operator.watchdog import (
    ENDLESS_BACKOFFS,
    LONGEST_RETRY_DELAY,
    STALL_FLOOR_SECONDS,
    ObserveWatchdog,
    OperatorStuck,
)

INTERVAL = 60.0  # ten intervals (600 s) are over the floor, so the limit is 600 s


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def watchdog(clock: Clock, api_server_answers: bool = True) -> ObserveWatchdog:
    return ObserveWatchdog(INTERVAL, lambda: api_server_answers, clock)


def test_retries_of_a_failed_request_never_run_out_and_start_over_for_each_request() -> None:
    first = list(itertools.islice(ENDLESS_BACKOFFS, 1000))
    assert first[:5] == [1.0, 2.0, 4.0, 8.0, LONGEST_RETRY_DELAY]
    assert set(first[4:]) == {LONGEST_RETRY_DELAY}
    # kopf iterates the setting once per request: the next request starts at 1 s again.
    assert list(itertools.islice(ENDLESS_BACKOFFS, 2)) == [1.0, 2.0]
    assert not hasattr(ENDLESS_BACKOFFS, "__len__")  # a length would be a retry limit to kopf


def test_a_resource_observed_on_time_keeps_the_operator_healthy(clock: Clock) -> None:
    dog = watchdog(clock)
    dog.watched("u1", "TrainingJob", "team-a/churn", active=True)
    for _ in range(100):
        clock.now += INTERVAL
        dog.observed("u1")
        assert dog.check() == {"observed": 1, "overdue": 0}


def test_a_resource_unobserved_past_the_limit_fails_the_check_naming_it(clock: Clock) -> None:
    dog = watchdog(clock)
    dog.watched("u1", "TrainingJob", "team-a/churn", active=True)
    dog.watched("u2", "TrainingJob", "team-a/other", active=True)
    clock.now += 599
    dog.observed("u2")
    assert dog.check()["overdue"] == 0
    clock.now += 2
    with pytest.raises(OperatorStuck, match=r"1 resource\(s\) not observed for over 600 s"):
        dog.check()
    with pytest.raises(OperatorStuck, match=r"team-a/churn$"):
        dog.check()


def test_the_limit_is_never_below_the_floor(clock: Clock) -> None:
    dog = ObserveWatchdog(1.0, lambda: True, clock)
    dog.watched("u1", "TrainingJob", "team-a/churn", active=True)
    clock.now += STALL_FLOOR_SECONDS - 1
    assert dog.check()["overdue"] == 0
    clock.now += 2
    with pytest.raises(OperatorStuck):
        dog.check()


def test_while_the_api_server_is_away_overdue_resources_wait_for_it(clock: Clock) -> None:
    dog = watchdog(clock, api_server_answers=False)
    dog.watched("u1", "TrainingJob", "team-a/churn", active=True)
    clock.now += 3600
    assert dog.check() == {"observed": 1, "overdue": 1, "waitingFor": "the API server"}


def test_finished_or_deleted_resources_are_not_waited_for(clock: Clock) -> None:
    dog = watchdog(clock)
    dog.watched("u1", "TrainingJob", "team-a/done", active=True)
    dog.watched("u1", "TrainingJob", "team-a/done", active=False)
    dog.observed("u1")  # a last observe that raced the watch brings nothing back
    clock.now += 3600
    assert dog.check() == {"observed": 0, "overdue": 0}


def test_a_watch_event_does_not_reset_an_overdue_resource(clock: Clock) -> None:
    """Only an observe proves the timer runs: a status written by someone else does not."""
    dog = watchdog(clock)
    dog.watched("u1", "TrainingJob", "team-a/churn", active=True)
    clock.now += 601
    dog.watched("u1", "TrainingJob", "team-a/churn", active=True)
    with pytest.raises(OperatorStuck):
        dog.check()


def test_the_lag_by_kind_is_its_longest_unobserved_resource(clock: Clock) -> None:
    dog = watchdog(clock)
    dog.watched("u1", "TrainingJob", "team-a/churn", active=True)
    dog.watched("u2", "TrainingJob", "team-a/other", active=True)
    dog.watched("u3", "ModelDeployment", "team-a/churn", active=True)
    clock.now += 5
    dog.observed("u2")
    dog.observed("u3")
    clock.now += 1
    assert dog.lags() == {"TrainingJob": 6.0, "ModelDeployment": 1.0}
    dog.watched("u1", "TrainingJob", "team-a/churn", active=False)  # it finished
    assert dog.lags() == {"TrainingJob": 1.0, "ModelDeployment": 1.0}
