"""Concurrency windows, feedback values and delay formatting, without a loop."""

import pytest
from hypothesis import given, strategies as st

from pyfastmta.qmgr.deliverylog import format_delay
from pyfastmta.qmgr.destination import Destination, Feedback, TransportPolicy


def policy(**overrides):
    values = dict(recipient_limit=50, initial_concurrency=5, concurrency_limit=20, positive_feedback="1",
                  negative_feedback="1", failed_cohort_limit=1)
    values.update(overrides)
    return TransportPolicy("smtp", **values)


def test_feedback_forms():
    assert Feedback("1", "p").at(4) == 1
    assert Feedback("1/4", "p").at(7) == 0.25
    assert Feedback("1/concurrency", "p").at(4) == 0.25
    assert Feedback("0.5", "p").at(3) == 0.5
    for bad in ("2", "x", "1/0", "-1", "1/concurrency/2"):
        with pytest.raises(ValueError, match="feedback|specify|division"):
            Feedback(bad, "smtp_destination_concurrency_positive_feedback")


def test_positive_feedback_grows_only_under_load():
    d = Destination("smtp", "a.test", policy(initial_concurrency=2, concurrency_limit=4))
    d.positive()  # nothing in flight: the window is not used, so it does not grow
    assert d.window == 2
    d.busy = 2
    for _ in range(10):
        d.positive()
    assert d.window == 4  # the limit


def test_variable_positive_feedback_adds_one_per_cohort():
    d = Destination("smtp", "a.test", policy(initial_concurrency=3, positive_feedback="1/concurrency"))
    d.busy = 3
    d.positive(); d.positive()
    assert d.window == 3
    d.positive()
    assert d.window == 4


def test_negative_feedback_and_dead_destination():
    d = Destination("smtp", "a.test", policy(initial_concurrency=5))
    assert not d.negative("refused")
    assert d.window == 4 and not d.dead
    died = [d.negative("refused") for _ in range(3)]
    assert died[-1] and d.dead and d.dead_reason == "refused" and d.window >= 1
    d.revive()
    assert not d.dead and d.window == 5


def test_half_negative_feedback_decrements_at_the_start_of_each_pair():
    d = Destination("smtp", "a.test", policy(initial_concurrency=8, negative_feedback="1/2", failed_cohort_limit=0))
    windows = []
    for _ in range(4):
        d.negative("timeout")
        windows.append(d.window)
    assert windows == [7, 7, 6, 6]
    for _ in range(50):
        d.negative("timeout")
    assert d.window == 1 and not d.dead  # limit 0: never dead


def test_success_resets_the_failed_cohort_count():
    d = Destination("smtp", "a.test", policy(initial_concurrency=4, failed_cohort_limit=1))
    d.negative("x"); d.negative("x")
    d.positive()
    assert d.failed_cohorts == 0
    assert not d.negative("x")


@given(st.lists(st.booleans(), max_size=200), st.integers(1, 10), st.integers(0, 30),
       st.sampled_from(["1", "1/concurrency", "1/3", "0"]), st.sampled_from(["1", "1/concurrency", "1/2", "0"]))
def test_window_stays_within_bounds(events, initial, limit, positive, negative):
    d = Destination("smtp", "a.test", policy(initial_concurrency=initial, concurrency_limit=limit,
                                             positive_feedback=positive, negative_feedback=negative,
                                             failed_cohort_limit=0))
    for success in events:
        d.busy = d.window
        d.positive() if success else d.negative("x")
        assert d.window >= 1
        if limit:
            assert d.window <= max(limit, 1)


def test_policy_errors_name_the_parameter():
    with pytest.raises(ValueError, match="smtp_destination_recipient_limit = 0"):
        policy(recipient_limit=0)


@pytest.mark.parametrize("seconds, text", [
    (0, "0"), (0.004, "0"), (0.06, "0.06"), (0.1, "0.1"), (0.123, "0.12"), (1.14, "1.1"), (1.0, "1"),
    (9.96, "10"), (12.4, "12"), (372467.2, "372467"),
])
def test_delay_format(seconds, text):
    assert format_delay(seconds) == text


@given(st.floats(0, 1e7))
def test_delay_format_is_close(seconds):
    text = format_delay(seconds)
    assert abs(float(text) - seconds) <= max(0.006, seconds * 0.05)
