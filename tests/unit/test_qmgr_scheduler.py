"""The queue manager over a real partition, with in-process delivery agents whose outcomes and
delays the tests script (scheduling needs no real peer), on uvloop and on asyncio's loop."""

import asyncio
import re
import time
from types import SimpleNamespace


from pyfastmta.qmgr import DeliveryOutcome, Scheduler, next_retry_time
from pyfastmta.queue.envelope import Envelope, Recipient
from pyfastmta.queue.index import DEFERRED
from pyfastmta.queue.partition import Partition

SENT_LINE = re.compile(
    r"^(?P<id>[0-9A-Za-z]+): to=<(?P<to>[^>]*)>, relay=(?P<relay>\S+?)(?:, conn_use=\d+)?,"
    r" delay=(?P<delay>\d+(?:\.\d{1,2})?),"
    r" delays=(?P<a>\d+(?:\.\d{1,2})?)/(?P<b>\d+(?:\.\d{1,2})?)/(?P<c>\d+(?:\.\d{1,2})?)/(?P<d>\d+(?:\.\d{1,2})?),"
    r" dsn=(?P<dsn>[245]\.\d{1,3}\.\d{1,3}), status=(?P<status>sent|deferred|bounced) \((?P<reason>.*)\)$")


def resolve(address, sender=""):
    domain = address.rpartition("@")[2]
    if domain == "local.test":
        return SimpleNamespace(transport="local", nexthop=domain)
    if domain == "error.test":
        return SimpleNamespace(transport="error", nexthop="5.1.1 this domain takes no mail")
    return SimpleNamespace(transport="smtp", nexthop=domain)


class Agent:
    """Answers every request after `delay` seconds with what `script(request, index)` says:
    "sent", "deferred", "bounced" or "down" (a connection failure)."""

    def __init__(self, script=lambda request, index: "sent", delay=0.0):
        self.script = script
        self.delay = delay
        self.requests = []
        self.busy = {}  # nexthop -> deliveries in flight
        self.peak = {}
        self.started_at = []  # (nexthop, concurrency when the delivery started)
        self.contents = []

    async def deliver(self, request):
        self.requests.append(request)
        path, offset, length = request.content
        with open(path, "rb") as f:
            f.seek(offset)
            self.contents.append((request.queue_id, f.read(length)))
        hop = request.nexthop
        self.busy[hop] = self.busy.get(hop, 0) + 1
        self.peak[hop] = max(self.peak.get(hop, 0), self.busy[hop])
        self.started_at.append((hop, self.busy[hop]))
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.busy[hop] -= 1
        outcomes = []
        for i in request.recipients:
            verdict = self.script(request, i)
            if verdict == "sent":
                outcomes.append(DeliveryOutcome(i, "sent", "2.0.0", "250 2.0.0 Ok: queued as X1",
                                                f"mx.{hop}[127.0.0.2]:25", setup_time=self.delay / 2))
            elif verdict == "deferred":
                outcomes.append(DeliveryOutcome(i, "deferred", "4.2.0", "450 4.2.0 try again later",
                                                f"mx.{hop}[127.0.0.2]:25"))
            elif verdict == "bounced":
                outcomes.append(DeliveryOutcome(i, "bounced", "5.1.1", "550 5.1.1 no such user",
                                                f"mx.{hop}[127.0.0.2]:25"))
            else:
                outcomes.append(DeliveryOutcome(i, "deferred", "4.4.1",
                                                f"connect to mx.{hop}[127.0.0.2]:25: Connection refused",
                                                site_failure=True))
        return outcomes


class Harness:
    def __init__(self, directory, agent, **options):
        self.directory = directory
        self.agent = agent
        self.options = options
        self.lines = []
        self.bounces = []
        self.warnings = []
        self.partition = Partition(str(directory), 0)
        self.partition.recover()
        self.scheduler = None
        self.task = None

    def log(self, program, text):
        self.lines.append((program, text))

    async def on_bounce(self, entry, outcomes):
        self.bounces.append((entry.queue_id, entry.envelope.sender, outcomes))

    async def on_delay_warning(self, entry, outcomes):
        self.warnings.append((entry.queue_id, outcomes))

    def start(self):
        self.scheduler = Scheduler(self.partition, resolve=resolve, agents={"smtp": self.agent}, log=self.log,
                                   on_bounce=self.on_bounce, on_delay_warning=self.on_delay_warning,
                                   **self.options)
        self.task = asyncio.get_running_loop().create_task(self.scheduler.run())

    async def queue(self, recipients, sender="alice@example.org", arrival_time=None):
        """recipients: addresses, or Recipient records."""
        envelope = Envelope(self.partition.new_queue_id(), sender,
                            [r if isinstance(r, Recipient) else Recipient(r) for r in recipients],
                            arrival_time or time.time())
        content = f"Subject: to {recipients[0]}\r\n\r\nbody\r\n".encode()
        envelope.size = len(content)
        await self.partition.enqueue(envelope, content)
        if self.scheduler is not None:
            self.scheduler.wake()
        return envelope.queue_id

    async def until(self, condition, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.01)

    async def settled(self):
        """Until no message is active any more."""
        await asyncio.sleep(0.02)
        await self.until(lambda: self.scheduler.active_messages == 0)

    async def close(self):
        await self.scheduler.stop()
        await self.task
        await self.partition.close()

    def texts(self, program=None):
        return [text for prog, text in self.lines if program is None or prog == program]


def test_delivers_logs_and_removes(run, tmp_path):
    async def main():
        h = Harness(tmp_path, Agent(delay=0.01))
        h.start()
        ids = [await h.queue([f"u{n}@a.test", f"v{n}@b.test"]) for n in range(5)]
        await h.until(lambda: not h.partition.entries)
        await h.settled()
        await h.close()
        for queue_id in ids:
            assert f"{queue_id}: removed" in h.texts("qmgr")
            assert any(t.startswith(f"{queue_id}: from=<alice@example.org>, size=") and t.endswith("nrcpt=2 (queue active)")
                       for t in h.texts("qmgr"))
        sent = [SENT_LINE.match(t) for t in h.texts("smtp")]
        assert len(sent) == 10 and all(sent)
        for match in sent:
            assert match["status"] == "sent" and match["dsn"] == "2.0.0"
            assert match["relay"].startswith("mx.") and match["reason"].startswith("250 ")
            parts = sum(float(match[k]) for k in "abcd")
            assert abs(parts - float(match["delay"])) < 0.05
        # The agent got the stored bytes, as the queue holds them.
        for queue_id, content in h.agent.contents:
            assert content.startswith(b"Subject: to ") and content.endswith(b"body\r\n")
        # The removed messages' segments may go; a reopened queue is empty.
        reopened = Partition(str(tmp_path), 0)
        assert reopened.recover().messages == 0

    run(main())


def test_a_rewritten_recipient_is_logged_with_orig_to(run, tmp_path):
    async def main():
        h = Harness(tmp_path, Agent())
        h.start()
        queue_id = await h.queue([Recipient("new@a.test", original="old@a.test"), Recipient("same@a.test")])
        await h.until(lambda: not h.partition.entries)
        await h.settled()
        await h.close()
        lines = [t for t in h.texts("smtp") if t.startswith(f"{queue_id}: to=")]
        assert any(t.startswith(f"{queue_id}: to=<new@a.test>, orig_to=<old@a.test>, relay=") for t in lines)
        assert any(t.startswith(f"{queue_id}: to=<same@a.test>, relay=") for t in lines)

    run(main())


def test_recipients_grouped_per_destination_within_the_limit(run, tmp_path):
    async def main():
        h = Harness(tmp_path, Agent(), transport_limits={"smtp_destination_recipient_limit": 40})
        h.start()
        recipients = [f"u{n}@a.test" for n in range(90)] + [f"w{n}@b.test" for n in range(3)]
        await h.queue(recipients)
        await h.until(lambda: not h.partition.entries)
        await h.settled()
        await h.close()
        sizes = sorted((r.nexthop, len(r.recipients)) for r in h.agent.requests)
        assert sizes == [("a.test", 10), ("a.test", 40), ("a.test", 40), ("b.test", 3)]
        delivered = sorted(i for r in h.agent.requests for i in r.recipients)
        assert delivered == list(range(93))  # each recipient once

    run(main())


def test_recipient_limit_one_makes_each_recipient_a_destination(run, tmp_path):
    async def main():
        h = Harness(tmp_path, Agent(delay=0.05), default_destination_recipient_limit=1,
                    initial_destination_concurrency=1)
        h.start()
        await h.queue([f"u{n}@a.test" for n in range(6)])
        await h.until(lambda: not h.partition.entries)
        await h.settled()
        await h.close()
        assert [len(r.recipients) for r in h.agent.requests] == [1] * 6
        # One destination per recipient: concurrency 1 each, yet all six in parallel.
        assert h.agent.peak["a.test"] == 6

    run(main())


def test_concurrency_slow_start_up_to_the_limit(run, tmp_path):
    async def main():
        h = Harness(tmp_path, Agent(delay=0.03), initial_destination_concurrency=2,
                    transport_limits={"smtp_destination_concurrency_limit": 7})
        h.start()
        for n in range(80):
            await h.queue([f"u{n}@a.test"])
        await h.until(lambda: not h.partition.entries)
        await h.settled()
        await h.close()
        starts = [busy for hop, busy in h.agent.started_at]
        assert starts[:2] == [1, 2]
        assert max(starts[:3]) == 2  # the third waits for a success before the window grows
        assert h.agent.peak["a.test"] == 7  # grows to the limit, never past it
        assert len(h.agent.requests) == 80

    run(main())


def test_dead_destination_is_suspended_then_retried(run, tmp_path):
    async def main():
        down = {"on": True}
        agent = Agent(lambda request, i: "down" if request.nexthop == "down.test" and down["on"] else "sent",
                      delay=0.01)
        h = Harness(tmp_path, agent, initial_destination_concurrency=1, minimal_backoff_time=60,
                    queue_run_delay=60)
        h.start()
        ids = [await h.queue([f"u{n}@down.test"]) for n in range(5)]
        other = await h.queue(["x@up.test"])
        await h.until(lambda: all(h.partition.entries[i].queue_name == DEFERRED for i in ids))
        await h.until(lambda: other not in h.partition.entries)
        # One failed cohort at concurrency 1: dead after one attempt; the rest never reach the agent.
        assert [r.nexthop for r in agent.requests].count("down.test") == 1
        suspended = [t for t in h.texts("error") if "delivery temporarily suspended: connect to" in t]
        assert len(suspended) == 4
        assert all(SENT_LINE.match(t)["status"] == "deferred" for t in suspended)
        entry = h.partition.entries[ids[-1]]
        assert entry.reasons[0].startswith("delivery temporarily suspended: connect to mx.down.test")
        assert entry.next_retry >= time.time() + 50
        down["on"] = False
        h.scheduler.flush()  # postqueue -f: forget the dead destination, retry everything now
        await h.until(lambda: not h.partition.entries)
        await h.settled()
        await h.close()

    run(main())


def test_rcpt_deferral_is_not_a_site_failure(run, tmp_path):
    async def main():
        agent = Agent(lambda request, i: "deferred", delay=0.01)
        h = Harness(tmp_path, agent, initial_destination_concurrency=1, queue_run_delay=60)
        h.start()
        ids = [await h.queue([f"u{n}@a.test"]) for n in range(4)]
        await h.until(lambda: all(h.partition.entries[i].queue_name == DEFERRED for i in ids))
        await h.close()
        assert len(agent.requests) == 4  # every message was tried: the destination stayed alive
        assert not any("suspended" in t for t in h.texts())

    run(main())


def test_deferred_message_retried_after_backoff_and_state_survives_reopen(run, tmp_path):
    async def main():
        attempts = []

        def script(request, i):
            attempts.append(time.time())
            return "deferred" if len(attempts) == 1 else "sent"

        h = Harness(tmp_path, Agent(script), minimal_backoff_time=0.4, maximal_backoff_time=1,
                    queue_run_delay=0.1)
        h.start()
        queue_id = await h.queue(["u@a.test"])
        await h.until(lambda: h.partition.entries[queue_id].queue_name == DEFERRED)
        entry = h.partition.entries[queue_id]
        assert entry.reasons == ["450 4.2.0 try again later"]
        assert 0.35 < entry.next_retry - attempts[0] < 0.5
        deferred_line = [t for t in h.texts("smtp") if "status=deferred" in t]
        assert SENT_LINE.match(deferred_line[0])["dsn"] == "4.2.0"
        await h.until(lambda: queue_id not in h.partition.entries)
        assert attempts[1] - attempts[0] >= 0.4  # not before the retry time
        await h.settled()
        await h.close()

    run(main())


def test_next_retry_survives_restart(run, tmp_path):
    async def first():
        h = Harness(tmp_path, Agent(lambda request, i: "deferred"), minimal_backoff_time=300)
        h.start()
        queue_id = await h.queue(["u@a.test", "v@a.test"])
        await h.until(lambda: h.partition.entries[queue_id].queue_name == DEFERRED)
        await h.close()
        return queue_id, h.partition.entries[queue_id].next_retry

    queue_id, next_retry = run(first())

    async def second():
        agent = Agent()
        h = Harness(tmp_path, agent, minimal_backoff_time=300)
        entry = h.partition.entries[queue_id]
        assert entry.queue_name == DEFERRED and entry.next_retry == next_retry
        assert entry.reasons == ["450 4.2.0 try again later"] * 2
        h.start()
        await asyncio.sleep(0.2)
        assert agent.requests == []  # not due yet: the restart does not retry early
        h.scheduler.flush()
        await h.until(lambda: queue_id not in h.partition.entries)
        await h.settled()
        await h.close()

    run(second())


def test_backoff_doubles_within_limits():
    assert next_retry_time(1000.0, 990.0, 300, 4000) == 1300.0
    assert next_retry_time(10000.0, 9000.0, 300, 4000) == 11000.0
    assert next_retry_time(100000.0, 0.0, 300, 4000) == 104000.0


def test_bounced_recipient_reaches_on_bounce_then_is_done(run, tmp_path):
    async def main():
        agent = Agent(lambda request, i: "bounced" if i == 0 else "sent")
        h = Harness(tmp_path, agent)
        h.start()
        queue_id = await h.queue(["nobody@a.test", "somebody@a.test"])
        await h.queue(["x@error.test"])
        await h.until(lambda: not h.partition.entries)
        await h.settled()
        await h.close()
        first = next(b for b in h.bounces if b[0] == queue_id)
        assert [(o.index, o.status, o.dsn) for o in first[2]] == [(0, "bounced", "5.1.1")]
        assert "550 5.1.1 no such user" in first[2][0].reason
        assert any("status=bounced (5.1.1 this domain takes no mail)" in t for t in h.texts("error"))
        assert len(h.bounces) == 2

    run(main())


def test_expired_mail_is_returned(run, tmp_path):
    async def main():
        agent = Agent(lambda request, i: "deferred")
        h = Harness(tmp_path, agent, maximal_queue_lifetime=3600, bounce_queue_lifetime=0)
        h.start()
        young = await h.queue(["u@a.test"])
        old = await h.queue(["v@a.test"], arrival_time=time.time() - 7200)
        null_sender = await h.queue(["w@a.test"], sender="")
        await h.until(lambda: old not in h.partition.entries and null_sender not in h.partition.entries
                      and h.partition.entries[young].queue_name == DEFERRED)
        await h.settled()
        await h.close()
        returned = {b[0]: b[2] for b in h.bounces}
        assert set(returned) == {old, null_sender}
        assert returned[old][0].status == "bounced" and returned[old][0].dsn == "4.2.0"
        assert f"{old}: from=<alice@example.org>, status=expired, returned to sender" in h.texts("qmgr")
        assert f"{old}: removed" in h.texts("qmgr")

    run(main())


def test_delay_warning_once(run, tmp_path):
    async def main():
        agent = Agent(lambda request, i: "deferred")
        h = Harness(tmp_path, agent, delay_warning_time=3600, minimal_backoff_time=0.1, maximal_backoff_time=0.1,
                    queue_run_delay=0.1)
        h.start()
        late = await h.queue(["u@a.test"], arrival_time=time.time() - 4000)
        await h.queue(["v@a.test"])
        await h.until(lambda: len(agent.requests) >= 6)
        await h.close()
        assert [w[0] for w in h.warnings] == [late]

    run(main())


def test_active_queue_limits(run, tmp_path):
    async def main():
        seen = []
        h = Harness(tmp_path, None, qmgr_message_active_limit=3)

        def script(request, i):
            seen.append(h.scheduler.active_messages)
            return "sent"

        h.agent = Agent(script, delay=0.02)
        for n in range(12):
            await h.queue([f"u{n}@d{n}.test"])  # different destinations: only the active limit holds back
        h.start()
        await h.until(lambda: not h.partition.entries)
        await h.settled()
        await h.close()
        assert max(seen) == 3 and len(seen) == 12

    run(main())


def test_recipient_limit_of_the_active_queue(run, tmp_path):
    async def main():
        seen = []
        h = Harness(tmp_path, None, qmgr_message_recipient_limit=5)

        def script(request, i):
            seen.append(h.scheduler.active_messages)
            return "sent"

        h.agent = Agent(script, delay=0.02)
        for n in range(4):
            await h.queue([f"u{n}.{k}@d{n}.test" for k in range(3)])
        await h.queue([f"big{k}@big.test" for k in range(8)])  # more than the limit: still goes alone
        h.start()
        await h.until(lambda: not h.partition.entries)
        await h.settled()
        await h.close()
        assert max(seen) == 1  # 3 + 3 recipients would exceed 5: one message at a time

    run(main())


def test_local_mail_waits_with_a_clear_reason(run, tmp_path):
    async def main():
        h = Harness(tmp_path, Agent())
        h.start()
        queue_id = await h.queue(["root@local.test", "x@a.test"])
        await h.until(lambda: h.partition.entries[queue_id].queue_name == DEFERRED)
        await h.close()
        entry = h.partition.entries[queue_id]
        assert entry.done == [False, True]
        assert entry.reasons[0].startswith("mail transport unavailable: no delivery agent for transport 'local'")

    run(main())


def test_agent_exception_defers_and_counts_as_failure(run, tmp_path):
    class Broken:
        calls = 0

        async def deliver(self, request):
            Broken.calls += 1
            raise ConnectionResetError("peer went away")

    async def main():
        h = Harness(tmp_path, Broken(), initial_destination_concurrency=1)
        h.start()
        ids = [await h.queue([f"u{n}@a.test"]) for n in range(3)]
        await h.until(lambda: all(h.partition.entries[i].queue_name == DEFERRED for i in ids))
        await h.close()
        assert Broken.calls == 1
        assert "delivery agent smtp failed" in h.partition.entries[ids[0]].reasons[0]

    run(main())


def test_stop_lets_deliveries_finish(run, tmp_path):
    async def main():
        agent = Agent(delay=0.2)
        h = Harness(tmp_path, agent)
        h.start()
        queue_id = await h.queue(["u@a.test"])
        await h.until(lambda: agent.requests)
        await h.close()
        assert queue_id not in h.partition.entries

    run(main())
