"""Per-destination queues and their concurrency windows (Postfix's slow start and feedback).

A destination is a (transport, nexthop) pair; with a recipient limit of 1 it is a recipient.
Its window starts at initial_destination_concurrency. A delivery without a site failure adds
positive feedback: once the accumulated feedback reaches 1 the window grows by one, up to the
concurrency limit, and only while deliveries actually fill it (a destination without load does
not grow a window it never used). A site failure subtracts negative feedback: the window shrinks
by one at the start of each run of 1/feedback failures, never below 1. Each failure also counts
1/window of a pseudo-cohort; when failed_cohort_limit cohorts have failed in a row the destination
is dead: no deliveries until it is revived after minimal_backoff_time (or by a flush).
"""

from __future__ import annotations

import collections
import re

_FEEDBACK = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:/\s*(\d+(?:\.\d*)?|\.\d+|concurrency)\s*)?\Z")

# Accumulated feedback within this of a whole step counts as the step: fractions such as 1/3 do
# not add up to exactly 1 in binary.
_ROUNDING = 1e-9


class Feedback:
    """A feedback value: "number", "number/number", or "number/concurrency"."""

    __slots__ = ("text", "value", "per_concurrency")

    def __init__(self, text: str, parameter: str) -> None:
        match = _FEEDBACK.match(str(text))
        if match is None:
            raise ValueError(f"{parameter} = {text}: specify a number, number/number or number/concurrency,"
                             " for example 1 or 1/concurrency")
        number, divisor = match.groups()
        value = float(number)
        per_concurrency = divisor == "concurrency"
        if divisor and not per_concurrency:
            if float(divisor) == 0:
                raise ValueError(f"{parameter} = {text}: division by zero; use a value from 0 to 1")
            value /= float(divisor)
        if not 0 <= value <= 1:
            raise ValueError(f"{parameter} = {text}: feedback must be in the range 0..1")
        self.text = text
        self.value = value
        self.per_concurrency = per_concurrency

    def at(self, window: int) -> float:
        return self.value / window if self.per_concurrency else self.value


class TransportPolicy:
    """The scheduling parameters of one transport (per-transport values or the defaults)."""

    __slots__ = ("name", "recipient_limit", "initial_concurrency", "concurrency_limit",
                 "positive_feedback", "negative_feedback", "failed_cohort_limit")

    def __init__(self, name: str, *, recipient_limit: int, initial_concurrency: int, concurrency_limit: int,
                 positive_feedback: str, negative_feedback: str, failed_cohort_limit: int) -> None:
        if recipient_limit < 1:
            raise ValueError(f"{name}_destination_recipient_limit = {recipient_limit}: the minimum is 1")
        if initial_concurrency < 1:
            raise ValueError(f"{name}_initial_destination_concurrency = {initial_concurrency}: the minimum is 1")
        if concurrency_limit < 0:
            raise ValueError(f"{name}_destination_concurrency_limit = {concurrency_limit}:"
                             " specify 0 (no limit) or a positive number")
        self.name = name
        self.recipient_limit = recipient_limit
        self.initial_concurrency = initial_concurrency
        self.concurrency_limit = concurrency_limit
        self.positive_feedback = Feedback(positive_feedback, f"{name}_destination_concurrency_positive_feedback")
        self.negative_feedback = Feedback(negative_feedback, f"{name}_destination_concurrency_negative_feedback")
        self.failed_cohort_limit = failed_cohort_limit


class Destination:
    __slots__ = ("transport", "nexthop", "policy", "todo", "busy", "window", "success", "failure",
                 "failed_cohorts", "dead_reason", "revive_handle")

    def __init__(self, transport: str, nexthop: str, policy: TransportPolicy) -> None:
        self.transport = transport
        self.nexthop = nexthop
        self.policy = policy
        self.todo: collections.deque = collections.deque()  # jobs waiting for the window
        self.busy = 0  # deliveries in flight
        self.window = min(policy.initial_concurrency, policy.concurrency_limit or policy.initial_concurrency)
        self.success = 0.0
        self.failure = 0.0
        self.failed_cohorts = 0.0
        self.dead_reason: str | None = None  # set while the destination is dead
        self.revive_handle = None  # the timer that revives a dead destination

    @property
    def dead(self) -> bool:
        return self.dead_reason is not None

    @property
    def has_room(self) -> bool:
        return self.busy < self.window

    @property
    def idle(self) -> bool:
        return not self.todo and not self.busy and self.dead_reason is None

    def positive(self) -> None:
        """A delivery finished without a site failure (call after busy counts it out)."""
        self.failed_cohorts = 0.0
        if self.dead_reason is not None:
            self.revive()
            return
        policy = self.policy
        limit = policy.concurrency_limit
        if (limit and self.window >= limit) or self.window >= self.busy + policy.initial_concurrency:
            return
        self.success += policy.positive_feedback.at(self.window)
        while self.success >= 1 - _ROUNDING:
            self.window += 1
            self.success -= 1
            self.failure = 0.0
        if limit and self.window > limit:
            self.window = limit

    def negative(self, reason: str) -> bool:
        """A delivery failed as a whole. True when this failure made the destination dead."""
        if self.dead_reason is not None:
            return False
        policy = self.policy
        self.failed_cohorts += 1 / self.window
        self.success = 0.0
        self.failure -= policy.negative_feedback.at(self.window)
        while self.failure < -_ROUNDING:
            self.window -= 1
            self.failure += 1
        if self.window < 1:
            self.window = 1
        if policy.failed_cohort_limit > 0 and self.failed_cohorts >= policy.failed_cohort_limit - _ROUNDING:
            self.dead_reason = reason
            return True
        return False

    def revive(self) -> None:
        """Back from the dead: the best concurrency is anyone's guess, so start over."""
        if self.revive_handle is not None:
            self.revive_handle.cancel()
            self.revive_handle = None
        self.dead_reason = None
        self.window = max(self.busy, self.policy.initial_concurrency)
        if self.policy.concurrency_limit:
            self.window = min(self.window, max(self.policy.concurrency_limit, 1))
        self.success = self.failure = self.failed_cohorts = 0.0
