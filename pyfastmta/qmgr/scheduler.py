"""The queue manager of one partition: from the queue to the delivery agents and back.

Postfix's qmgr(8), with its parameter names and defaults:

- Leaky bucket: at most qmgr_message_active_limit messages and (about) qmgr_message_recipient_limit
  recipients are active at once, so a backlog of millions stays on disk. Room is filled in turn
  from the incoming queue and from the deferred messages that are due (fairness), oldest first.
- Each pending recipient is resolved once to (transport, nexthop); the recipients of a message are
  grouped per destination into deliveries of at most <transport>_destination_recipient_limit.
- Per destination a concurrency window with slow start, feedback and dead-destination detection
  (destination.py). Deliveries to a dead destination are deferred at once.
- Outcomes are queue records: sent and bounced recipients DONE (bounced ones after on_bounce has
  queued the notification), deferred ones DEFER with the reason and the next retry time, so the
  deferred queue and its schedule survive a restart. Deferred mail is picked up by the deferred
  queue scan, every queue_run_delay, once its time has come.
- Backoff: the next attempt comes after as long as the message has been queued, clamped to
  [minimal_backoff_time, maximal_backoff_time]; the interval thus doubles from attempt to attempt.
- Mail still deferred after maximal_queue_lifetime (bounce_queue_lifetime for the null sender)
  is returned; with delay_warning_time > 0 the sender hears once that the mail is delayed.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pyfastmta.qmgr.deliverylog import recipient_line
from pyfastmta.qmgr.delivery import DeliveryAgent, DeliveryOutcome, DeliveryRequest
from pyfastmta.qmgr.destination import Destination, TransportPolicy
from pyfastmta.queue.index import ACTIVE, DEFERRED, INCOMING, QueueEntry
from pyfastmta.queue.record import Transition

BounceCallback = Callable[[QueueEntry, list[DeliveryOutcome]], Awaitable[None]]

# Postfix's error(8) transports: "error" bounces, "retry" defers, with the nexthop as the reason.
ERROR_TRANSPORT = "error"
RETRY_TRANSPORT = "retry"


class _Message:
    """An active message: what its deliveries reported so far."""

    __slots__ = ("entry", "active_time", "outstanding", "recipient_count", "bounced", "deferred")

    def __init__(self, entry: QueueEntry, active_time: float, recipient_count: int) -> None:
        self.entry = entry
        self.active_time = active_time
        self.outstanding = 0  # deliveries not yet finished
        self.recipient_count = recipient_count
        self.bounced: list[DeliveryOutcome] = []
        self.deferred: list[DeliveryOutcome] = []


class _Job:
    __slots__ = ("message", "destination", "recipients")

    def __init__(self, message: _Message, destination: Destination, recipients: list[int]) -> None:
        self.message = message
        self.destination = destination
        self.recipients = recipients


def filter_route(content_filter: str, address: str, resolve, sender: str) -> tuple[str, str]:
    """(transport, nexthop) of a recipient of a message with a content filter (FILTER action or
    content_filter): the filter's, whatever the recipient. A filter without a nexthop
    ("smtp:") sends to the recipient's domain, as Postfix's qmgr does (default_filter_nexthop
    being empty); an address without a domain to where the resolver would send it."""
    transport, _, nexthop = content_filter.partition(":")
    if not nexthop:
        nexthop = address.rpartition("@")[2] if "@" in address else ""
        if not nexthop:
            nexthop = resolve(address, sender).nexthop
    return transport, nexthop


def next_retry_time(now: float, arrival_time: float, minimal_backoff_time: float,
                    maximal_backoff_time: float) -> float:
    """When a message deferred now is due again."""
    backoff = min(max(now - arrival_time, minimal_backoff_time), maximal_backoff_time)
    return now + backoff


class Scheduler:
    def __init__(self, partition, **settings: Any) -> None:
        """settings are those of configure()."""
        self.partition = partition
        self._policies: dict[str, TransportPolicy] = {}
        self._destinations: dict[tuple, Destination] = {}
        self._active: dict[str, _Message] = {}
        self._active_recipients = 0
        self._deferred_due: collections.deque[str] = collections.deque()
        self._holding: set[str] = set()  # HOLD records being written
        self._tasks: set[asyncio.Task] = set()
        self._wakeup = asyncio.Event()
        self._scan_deferred_now = True  # the first pass picks up what is due after a restart
        self._flush_all = False
        self._flush_site: str | None = None
        self._stopping = False
        self._stopped = asyncio.Event()
        self._running = False
        self.configure(**settings)

    def configure(self, *, resolve: Callable[[str, str], Any], agents: dict[str, DeliveryAgent],
                  log: Callable[[str, str], None], on_bounce: BounceCallback,
                  on_delay_warning: BounceCallback | None = None,
                  qmgr_message_active_limit: int = 20000, qmgr_message_recipient_limit: int = 20000,
                  default_destination_recipient_limit: int = 50, initial_destination_concurrency: int = 5,
                  default_destination_concurrency_limit: int = 20,
                  default_destination_concurrency_positive_feedback: str = "1",
                  default_destination_concurrency_negative_feedback: str = "1",
                  default_destination_concurrency_failed_cohort_limit: int = 1,
                  transport_limits: dict[str, Any] | None = None,
                  minimal_backoff_time: float = 300.0, maximal_backoff_time: float = 4000.0,
                  queue_run_delay: float = 300.0, maximal_queue_lifetime: float = 432000.0,
                  bounce_queue_lifetime: float = 432000.0, delay_warning_time: float = 0.0) -> None:
        """Set (or, on reload, replace) the settings; active messages and deliveries in flight
        stay as they are, and what is scheduled from now on follows the new ones.

        resolve(address, sender) returns an object with .transport and .nexthop. transport_limits holds
        per-transport overrides by their Postfix parameter names, e.g.
        {"smtp_destination_concurrency_limit": 10, "lmtp_destination_recipient_limit": 1}.
        on_bounce(entry, outcomes) must queue the non-delivery notification for the bounced
        recipients before it returns; on_delay_warning(entry, outcomes) likewise for a delay
        warning (delay_warning_time > 0). Raises ValueError for a bad value, changing nothing."""
        if qmgr_message_active_limit < 1:
            raise ValueError(f"qmgr_message_active_limit = {qmgr_message_active_limit}: the minimum is 1")
        if qmgr_message_recipient_limit < 1:
            raise ValueError(f"qmgr_message_recipient_limit = {qmgr_message_recipient_limit}: the minimum is 1")
        if minimal_backoff_time <= 0 or maximal_backoff_time <= 0 or queue_run_delay <= 0:
            raise ValueError("minimal_backoff_time, maximal_backoff_time and queue_run_delay must be"
                             " greater than zero")
        defaults = {
            "destination_recipient_limit": default_destination_recipient_limit,
            "initial_destination_concurrency": initial_destination_concurrency,
            "destination_concurrency_limit": default_destination_concurrency_limit,
            "destination_concurrency_positive_feedback": default_destination_concurrency_positive_feedback,
            "destination_concurrency_negative_feedback": default_destination_concurrency_negative_feedback,
            "destination_concurrency_failed_cohort_limit": default_destination_concurrency_failed_cohort_limit,
        }
        limits = dict(transport_limits or {})
        # A bad per-transport value is reported now, not at the first mail.
        policies = {transport: self._make_policy(transport, defaults, limits) for transport in agents}
        self._resolve = resolve
        self._agents = agents
        self._log = log
        self._on_bounce = on_bounce
        self._on_delay_warning = on_delay_warning
        self.qmgr_message_active_limit = qmgr_message_active_limit
        self.qmgr_message_recipient_limit = qmgr_message_recipient_limit
        self.minimal_backoff_time = minimal_backoff_time
        self.maximal_backoff_time = maximal_backoff_time
        self.queue_run_delay = queue_run_delay
        self.maximal_queue_lifetime = maximal_queue_lifetime
        self.bounce_queue_lifetime = bounce_queue_lifetime
        self.delay_warning_time = delay_warning_time
        self._defaults = defaults
        self._transport_limits = limits
        self._policies = policies
        for destination in self._destinations.values():
            destination.policy = self._policy(destination.transport)
        self._wakeup.set()

    # -- configuration --------------------------------------------------------------------------

    def _policy(self, transport: str) -> TransportPolicy:
        policy = self._policies.get(transport)
        if policy is None:
            policy = self._policies[transport] = self._make_policy(
                transport, self._defaults, self._transport_limits)
        return policy

    @staticmethod
    def _make_policy(transport: str, defaults: dict[str, Any], limits: dict[str, Any]) -> TransportPolicy:
        def value(name: str) -> Any:
            # Postfix names the per-transport recipient and concurrency limits
            # <transport>_destination_..., the initial concurrency <transport>_initial_...
            return limits.get(f"{transport}_{name}", defaults[name])

        return TransportPolicy(
            transport,
            recipient_limit=int(value("destination_recipient_limit")),
            initial_concurrency=int(value("initial_destination_concurrency")),
            concurrency_limit=int(value("destination_concurrency_limit")),
            positive_feedback=str(value("destination_concurrency_positive_feedback")),
            negative_feedback=str(value("destination_concurrency_negative_feedback")),
            failed_cohort_limit=int(value("destination_concurrency_failed_cohort_limit")))

    # -- control --------------------------------------------------------------------------------

    def wake(self) -> None:
        """New mail was queued: look at the incoming queue soon."""
        self._wakeup.set()

    def flush(self, site: str | None = None) -> None:
        """Deliver deferred mail now, ignoring its retry time, and forget dead destinations
        (postqueue -f). With site: only messages with a recipient in that domain (postqueue -s)."""
        self._scan_deferred_now = True
        self._flush_all = True
        self._flush_site = site.lower().lstrip("@") if site else None
        for key, destination in list(self._destinations.items()):
            if destination.dead:
                self._revive(destination, key)
        self._wakeup.set()

    @property
    def active_messages(self) -> int:
        return len(self._active)

    async def run(self) -> None:
        """Schedule deliveries until stop()."""
        if self._running:
            raise RuntimeError("the queue manager of this partition is running already")
        self._running = True
        loop = asyncio.get_running_loop()
        next_scan = loop.time()
        try:
            while not self._stopping:
                if self._scan_deferred_now or loop.time() >= next_scan:
                    self._scan_deferred_now = False
                    self._scan_deferred()
                    next_scan = loop.time() + self.queue_run_delay
                self._fill()
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), max(0.0, next_scan - loop.time()))
                except TimeoutError:
                    pass
        finally:
            self._stopped.set()

    async def stop(self, timeout: float = 30.0) -> None:
        """Take no more work, let deliveries in flight finish for up to timeout seconds, then
        cancel the rest (their messages stay active and are taken up again on restart)."""
        self._stopping = True
        self._wakeup.set()
        for destination in self._destinations.values():
            if destination.revive_handle is not None:
                destination.revive_handle.cancel()
                destination.revive_handle = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # A delivery that ends spawns its message's final records: wait for those too.
        while self._tasks and loop.time() < deadline:
            await asyncio.wait(set(self._tasks), timeout=deadline - loop.time())
        pending = set(self._tasks)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        if self._running:
            await self._stopped.wait()

    # -- taking messages into the active queue --------------------------------------------------

    def _scan_deferred(self) -> None:
        """Find the deferred messages that are due, and active ones nobody is working on (their
        queue record could not be written): the deferred queue scan."""
        now = time.time()
        flush_all, site = self._flush_all, self._flush_site
        self._flush_all = False
        self._flush_site = None
        due = []
        for queue_id, entry in self.partition.entries.items():
            name = entry.queue_name
            if name == DEFERRED:
                if site is not None:
                    if not self._has_site(entry, site):
                        continue
                elif not flush_all and entry.next_retry > now:
                    continue
                due.append((entry.next_retry, queue_id))
            elif name == ACTIVE and queue_id not in self._active:
                due.append((0.0, queue_id))
        due.sort()
        known = set(self._deferred_due)
        self._deferred_due.extend(queue_id for _retry, queue_id in due if queue_id not in known)

    @staticmethod
    def _has_site(entry: QueueEntry, site: str) -> bool:
        for i in entry.pending_recipients():
            if entry.envelope.recipients[i].address.rpartition("@")[2].lower() == site:
                return True
        return False

    def _room(self) -> bool:
        return (len(self._active) < self.qmgr_message_active_limit
                and self._active_recipients < self.qmgr_message_recipient_limit)

    def _fill(self) -> None:
        """Admit messages while the active queue has room: one incoming, one deferred, in turn."""
        if self._stopping or not self._room():
            return
        active = self._active
        room = self.qmgr_message_active_limit - len(active)
        fresh = []
        for queue_id in self.partition.incoming:
            if queue_id not in active:
                fresh.append(queue_id)
                if len(fresh) >= room:
                    break
        fresh.reverse()
        deferred = self._deferred_due
        while self._room() and (fresh or deferred):
            if fresh:
                queue_id = fresh.pop()
                if not self._admit(queue_id, INCOMING):
                    break
            if deferred and self._room():
                queue_id = deferred.popleft()
                if not self._admit(queue_id, DEFERRED):
                    deferred.appendleft(queue_id)
                    break

    def _admit(self, queue_id: str, origin: str) -> bool:
        """Make a message active; False when it must wait for recipient room."""
        if queue_id in self._active:
            return True
        entry = self.partition.entries.get(queue_id)
        if entry is None or entry.queue_name not in (origin, ACTIVE):
            return True  # final, held, or taken already: nothing to do
        if origin == INCOMING and entry.envelope.hold and entry.next_retry == 0.0:
            # An access table's HOLD: smtpd files the message on hold itself; this covers the
            # moment before that record is written, and a crash in between. A message that
            # was released (or deferred) once has a retry time and is delivered as usual.
            self._hold(queue_id)
            return True
        pending = entry.pending_recipients()
        if not pending:
            return True
        if self._active and self._active_recipients + len(pending) > self.qmgr_message_recipient_limit:
            return False
        try:
            written = self.partition.record_state(queue_id, Transition.ACTIVE)
        except (KeyError, RuntimeError):
            return True
        written.add_done_callback(lambda future: self._check_written(future, queue_id))
        now = time.time()
        message = _Message(entry, now, len(pending))
        self._active[queue_id] = message
        self._active_recipients += len(pending)
        envelope = entry.envelope
        self._log("qmgr", f"{queue_id}: from=<{envelope.sender}>, size={envelope.size or entry.content_length},"
                          f" nrcpt={len(envelope.recipients)} (queue active)")
        self._route(message, pending, now)
        if message.outstanding == 0:
            self._spawn(self._finish(message))
        return True

    def _route(self, message: _Message, pending: list[int], now: float) -> None:
        """Resolve each recipient and queue its delivery at its destination."""
        entry = message.entry
        recipients = entry.envelope.recipients
        content_filter = entry.envelope.content_filter
        groups: dict[tuple, list[int]] = {}
        for i in pending:
            address = recipients[i].address
            try:
                if content_filter:
                    transport, nexthop = filter_route(content_filter, address, self._resolve,
                                                      entry.envelope.sender)
                else:
                    resolution = self._resolve(address, entry.envelope.sender)
                    transport, nexthop = resolution.transport, resolution.nexthop
            except Exception as exc:  # noqa: BLE001 - a resolver failure defers, it never loses mail
                self._immediate(message, i, "qmgr", "deferred", "4.3.0", f"address resolver failure: {exc}", now)
                continue
            if transport == ERROR_TRANSPORT:
                self._immediate(message, i, "error", "bounced", "5.0.0", nexthop or "mail for this address is rejected", now)
            elif transport == RETRY_TRANSPORT:
                self._immediate(message, i, "retry", "deferred", "4.0.0", nexthop or "delivery is postponed", now)
            elif transport not in self._agents:
                self._immediate(message, i, "qmgr", "deferred", "4.3.0",
                                f"mail transport unavailable: no delivery agent for transport {transport!r}"
                                " is running; the mail stays queued until there is one", now)
            else:
                policy = self._policy(transport)
                # With a recipient limit of 1 a destination is a recipient, as in Postfix.
                key = (transport, nexthop, address) if policy.recipient_limit == 1 else (transport, nexthop)
                group = groups.get(key)
                if group is None:
                    groups[key] = [i]
                else:
                    group.append(i)
        for key, indexes in groups.items():
            destination = self._destinations.get(key)
            if destination is None:
                destination = self._destinations[key] = Destination(key[0], key[1], self._policy(key[0]))
            limit = destination.policy.recipient_limit
            for start in range(0, len(indexes), limit):
                destination.todo.append(_Job(message, destination, indexes[start:start + limit]))
                message.outstanding += 1
            self._dispatch(key, destination)

    def _immediate(self, message: _Message, index: int, program: str, status: str, dsn: str,
                   reason: str, now: float) -> None:
        """An outcome decided without a delivery agent."""
        outcome = DeliveryOutcome(index, status, dsn, reason)
        self._report(message, outcome, program, message.active_time, now, now)

    # -- deliveries -----------------------------------------------------------------------------

    def _dispatch(self, key: tuple, destination: Destination) -> None:
        if self._stopping:
            return
        if destination.dead:
            reason = f"delivery temporarily suspended: {destination.dead_reason}"
            now = time.time()
            while destination.todo:
                job = destination.todo.popleft()
                for i in job.recipients:
                    self._immediate(job.message, i, "error", "deferred", "4.4.1", reason, now)
                self._job_done(job.message)
            return
        while destination.todo and destination.busy < destination.window:
            job = destination.todo.popleft()
            destination.busy += 1
            self._spawn(self._deliver(key, job))
        if destination.idle:
            del self._destinations[key]

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, key: tuple, job: _Job) -> None:
        message, destination = job.message, job.destination
        entry = message.entry
        queue_id = entry.queue_id
        start = time.time()
        try:
            content = self.partition.content_location(queue_id)
        except KeyError:  # deleted by an administrator meanwhile
            destination.busy -= 1
            self._dispatch(key, destination)
            self._job_done(message)
            return
        request = DeliveryRequest(queue_id, entry.envelope, job.recipients, destination.transport,
                                  destination.nexthop, content)
        try:
            outcomes = await self._agents[destination.transport].deliver(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - an agent's failure defers, it never loses mail
            reason = f"delivery agent {destination.transport} failed: {exc!r}"
            outcomes = [DeliveryOutcome(i, "deferred", "4.3.0", reason, site_failure=True)
                        for i in job.recipients]
        end = time.time()
        destination.busy -= 1
        outcomes = self._complete(job, outcomes)
        failure = next((o for o in outcomes if o.site_failure and o.status == "deferred"), None)
        if failure is None:
            destination.positive()
        elif destination.negative(failure.reason):
            self._kill(key, destination)
        self._dispatch(key, destination)

        sent = []
        for outcome in outcomes:
            self._report(message, outcome, destination.transport, start, end, end)
            if outcome.status == "sent":
                sent.append(outcome.index)
        if sent:
            await self._write(queue_id, Transition.DONE, recipients=sent)
        self._job_done(message)

    def _complete(self, job: _Job, outcomes: list[DeliveryOutcome]) -> list[DeliveryOutcome]:
        """One outcome per recipient of the job, whatever the agent returned."""
        by_index = {}
        for outcome in outcomes:
            if outcome.index in by_index:
                continue
            if outcome.status not in ("sent", "deferred", "bounced"):
                outcome = DeliveryOutcome(outcome.index, "deferred", "4.3.0",
                                          f"delivery agent reported unknown status {outcome.status!r}",
                                          outcome.relay)
            by_index[outcome.index] = outcome
        return [by_index.get(i) or DeliveryOutcome(i, "deferred", "4.3.0",
                                                   "delivery agent reported no result for this recipient")
                for i in job.recipients]

    def _report(self, message: _Message, outcome: DeliveryOutcome, program: str, start: float, end: float,
                now: float) -> None:
        """Log one recipient's outcome and remember what the message must do about it."""
        entry = message.entry
        arrival = entry.envelope.arrival_time
        setup = min(max(outcome.setup_time, 0.0), max(end - start, 0.0))
        delays = (message.active_time - arrival, start - message.active_time, setup, end - start - setup)
        recipient = entry.envelope.recipients[outcome.index]
        self._log(program, recipient_line(
            entry.queue_id, recipient.address, relay=outcome.relay,
            delay=now - arrival, delays=delays, dsn=outcome.dsn, status=outcome.status, reason=outcome.reason,
            conn_use=outcome.conn_use, original=recipient.original))
        if outcome.status == "bounced":
            message.bounced.append(outcome)
        elif outcome.status == "deferred":
            message.deferred.append(outcome)

    def _kill(self, key: tuple, destination: Destination) -> None:
        """The destination is dead: retry it after minimal_backoff_time."""
        loop = asyncio.get_running_loop()
        destination.revive_handle = loop.call_later(self.minimal_backoff_time, self._revive, destination, key)

    def _revive(self, destination: Destination, key: tuple) -> None:
        destination.revive()
        if self._destinations.get(key) is destination:
            self._dispatch(key, destination)

    def _job_done(self, message: _Message) -> None:
        message.outstanding -= 1
        if message.outstanding == 0:
            self._spawn(self._finish(message))

    # -- the end of a message's turn in the active queue ----------------------------------------

    def _lifetime(self, entry: QueueEntry) -> float:
        return self.bounce_queue_lifetime if entry.envelope.sender == "" else self.maximal_queue_lifetime

    async def _finish(self, message: _Message) -> None:
        entry = message.entry
        queue_id = entry.queue_id
        try:
            now = time.time()
            arrival = entry.envelope.arrival_time
            bounced, deferred = message.bounced, message.deferred
            if deferred and now - arrival >= self._lifetime(entry):
                self._log("qmgr", f"{queue_id}: from=<{entry.envelope.sender}>, status=expired, returned to sender")
                bounced = bounced + [DeliveryOutcome(o.index, "bounced", o.dsn, o.reason, o.relay) for o in deferred]
                deferred = []
            writes = []
            if bounced:
                try:
                    await self._on_bounce(entry, bounced)
                except Exception as exc:  # noqa: BLE001 - keep the recipients until a notice is queued
                    self._log("qmgr", f"warning: {queue_id}: could not queue the non-delivery notification"
                                      f" ({exc}); the bounced recipients stay queued and are tried again")
                    deferred = deferred + [DeliveryOutcome(o.index, "deferred", o.dsn, o.reason, o.relay)
                                           for o in bounced]
                else:
                    writes.append(self._record(queue_id, Transition.DONE, recipients=[o.index for o in bounced]))
            if deferred:
                await self._warn_delay(entry, deferred, now)
                retry = next_retry_time(now, arrival, self.minimal_backoff_time, self.maximal_backoff_time)
                by_reason: dict[str, list[int]] = {}
                for outcome in deferred:
                    by_reason.setdefault(outcome.reason, []).append(outcome.index)
                for reason, indexes in by_reason.items():
                    writes.append(self._record(queue_id, Transition.DEFER, reason, next_retry=retry,
                                               recipients=indexes))
            for written in writes:
                if written is not None:
                    await self._settle(queue_id, written)
            if queue_id not in self.partition.entries:
                self._log("qmgr", f"{queue_id}: removed")
        finally:
            if self._active.pop(queue_id, None) is not None:
                self._active_recipients -= message.recipient_count
            self._wakeup.set()

    async def _warn_delay(self, entry: QueueEntry, deferred: list[DeliveryOutcome], now: float) -> None:
        """One delay warning per message: at the first deferral once delay_warning_time has
        passed (an earlier deferral after that time would have sent it)."""
        if self.delay_warning_time <= 0 or self._on_delay_warning is None:
            return
        warn_at = entry.envelope.arrival_time + self.delay_warning_time
        if now < warn_at or entry.deferred_time >= warn_at:
            return
        try:
            await self._on_delay_warning(entry, deferred)
        except Exception as exc:  # noqa: BLE001 - a missing warning must not stop the deferral
            self._log("qmgr", f"warning: {entry.queue_id}: could not queue the delay warning: {exc}")

    # -- queue records --------------------------------------------------------------------------

    def _hold(self, queue_id: str) -> None:
        """Move a message to the hold queue (once, while the record is being written)."""
        if queue_id in self._holding:
            return
        written = self._record(queue_id, Transition.HOLD)
        if written is None:
            return
        self._holding.add(queue_id)

        def settled(future: asyncio.Future) -> None:
            self._holding.discard(queue_id)
            self._check_written(future, queue_id)

        written.add_done_callback(settled)

    def _record(self, queue_id: str, transition: Transition, reason: str | None = None, *,
                next_retry: float | None = None, recipients: list[int] | None = None) -> asyncio.Future | None:
        try:
            return self.partition.record_state(queue_id, transition, reason, next_retry=next_retry,
                                               recipients=recipients)
        except KeyError:
            return None  # deleted by an administrator meanwhile
        except RuntimeError as exc:
            self._log("qmgr", f"warning: {queue_id}: {exc}; the message stays queued")
            return None

    async def _write(self, queue_id: str, transition: Transition, **fields) -> None:
        written = self._record(queue_id, transition, **fields)
        if written is not None:
            await self._settle(queue_id, written)

    async def _settle(self, queue_id: str, written: asyncio.Future) -> None:
        try:
            await written
        except OSError as exc:
            self._log("qmgr", f"warning: {queue_id}: {exc}; the message stays queued and is tried again"
                              " at the next deferred queue scan")

    def _check_written(self, written: asyncio.Future, queue_id: str) -> None:
        if written.cancelled():
            return
        error = written.exception()
        if error is not None:
            self._log("qmgr", f"warning: {queue_id}: {error}")
