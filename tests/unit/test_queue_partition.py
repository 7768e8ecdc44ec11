"""Queue partitions on real files: group commit, durability, recovery after crashes and damage."""

import asyncio
import errno
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import uvloop

from pyfastmta.queue.envelope import Envelope, Recipient, encode_envelope
from pyfastmta.queue import partition as partition_module
from pyfastmta.queue.partition import Partition, QueueWriteError, partition_directory
from pyfastmta.queue.record import HEADER_SIZE
from pyfastmta.queue.segment import list_segments



@pytest.fixture(params=["asyncio", "uvloop"])
def loop_kind(request):
    return request.param


@pytest.fixture
def run(loop_kind):
    factory = uvloop.new_event_loop if loop_kind == "uvloop" else asyncio.new_event_loop

    def run_coroutine(coroutine):
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(coroutine)

    return run_coroutine


def make_envelope(part, number, recipients=1):
    return Envelope(
        queue_id=part.new_queue_id(), sender=f"sender{number}@example.org",
        recipients=[Recipient(f"rcpt{number}.{i}@example.net", orcpt=f"rfc822;r{i}@example.net")
                    for i in range(recipients)],
        arrival_time=time.time(), client_name="client.example", client_addr="192.0.2.1",
        client_port=40000 + number, helo_name="client.example", size=0,
    )


def make_content(number):
    return b"Subject: message %d\r\n\r\n" % number + b"line %d\r\n" % number * (number % 50 + 1)


async def enqueue_many(part, count, first=0):
    """Enqueue count messages from as many concurrent tasks; return {queue_id: (envelope, content)}."""
    queued = {}

    async def one(number):
        envelope = make_envelope(part, number)
        content = make_content(number)
        envelope.size = len(content)
        await part.enqueue(envelope, content)
        queued[envelope.queue_id] = (envelope, content)

    await asyncio.gather(*(one(n) for n in range(first, first + count)))
    return queued


def reopen(directory, index=0, **options):
    part = Partition(directory, index, **options)
    return part, part.recover()


def assert_holds(part, queued):
    assert set(part.entries) == set(queued)
    for queue_id, (envelope, content) in queued.items():
        assert part.entries[queue_id].envelope == envelope
        assert part.read_content(queue_id) == content


def test_concurrent_enqueues_all_recover(tmp_path, run):
    async def scenario():
        part, report = reopen(str(tmp_path))
        assert report.messages == 0
        queued = await enqueue_many(part, 600)
        await part.close()
        return queued

    queued = run(scenario())
    part, report = reopen(str(tmp_path))
    assert report.messages == 600 and report.corrupt_records == 0 and report.truncated_bytes == 0
    assert_holds(part, queued)
    assert all(entry.queue_name == "incoming" for entry in part.entries.values())


@pytest.fixture
def slow_fdatasync(monkeypatch):
    """The datasync thread's fdatasync takes 3 ms longer and logs (inode, size) of each file it
    made durable."""
    real = os.fdatasync
    durable = []
    lock = threading.Lock()

    def fdatasync(fd):
        time.sleep(0.003)
        real(fd)
        status = os.fstat(fd)
        with lock:
            durable.append((status.st_ino, status.st_size))

    monkeypatch.setattr(partition_module, "datasync_override", fdatasync)
    return durable


def test_one_fdatasync_covers_many_records(tmp_path, run, slow_fdatasync):
    async def scenario():
        part, _ = reopen(str(tmp_path), commit_batch=256)
        await enqueue_many(part, 1000)
        stats = part.stats
        await part.close()
        return stats

    stats = run(scenario())
    assert stats["records"] == 1000
    # The first record is alone (nothing else waited); the others share fsyncs of up to 256.
    assert stats["commits"] <= 8
    assert stats["max_batch"] == 256


def test_light_load_commits_at_once(tmp_path, run):
    async def scenario():
        part, _ = reopen(str(tmp_path))
        started = time.monotonic()
        await enqueue_many(part, 1)
        elapsed = time.monotonic() - started
        stats = part.stats
        await part.close()
        return elapsed, stats

    elapsed, stats = run(scenario())
    assert stats["commits"] == 1 and stats["last_batch"] == 1
    assert elapsed < 0.5


def test_commit_delay_gathers_records_until_the_batch_is_full(tmp_path, run):
    async def scenario():
        part, _ = reopen(str(tmp_path), commit_delay=0.05, commit_batch=1000)
        loop = asyncio.get_running_loop()
        tasks = []
        for number in range(10):  # arrive over ~20 ms: all inside one 50 ms window
            tasks.append(loop.create_task(enqueue_many(part, 1, first=number)))
            await asyncio.sleep(0.002)
        await asyncio.gather(*tasks)
        windowed = part.stats
        await part.close()

        part, _ = reopen(str(tmp_path), commit_delay=30.0, commit_batch=8)
        started = time.monotonic()
        await enqueue_many(part, 8, first=100)  # a full batch does not wait for the delay
        elapsed = time.monotonic() - started
        full = part.stats
        await part.close()
        return windowed, full, elapsed

    windowed, full, elapsed = run(scenario())
    assert windowed["commits"] == 1 and windowed["last_batch"] == 10
    assert full["commits"] == 1 and full["last_batch"] == 8
    assert elapsed < 5


def test_no_enqueue_returns_before_its_record_is_synced(tmp_path, run, slow_fdatasync):
    violations = []

    async def scenario():
        part, _ = reopen(str(tmp_path), commit_batch=64)

        async def one(number):
            envelope = make_envelope(part, number)
            await part.enqueue(envelope, make_content(number))
            entry = part.entries[envelope.queue_id]
            path = os.path.join(part.directory, f"segment.{entry.segment:016X}")
            inode = os.stat(path).st_ino
            end = entry.content_offset + entry.content_length
            if not any(ino == inode and size >= end for ino, size in list(slow_fdatasync)):
                violations.append(envelope.queue_id)

        await asyncio.gather(*(one(n) for n in range(300)))
        await part.close()

    run(scenario())
    assert len(slow_fdatasync) >= 2
    assert violations == []


@pytest.mark.parametrize("failing_call", ["fdatasync", "writev"])
def test_write_failure_fails_the_batch_and_later_batches_use_a_new_segment(
        tmp_path, run, monkeypatch, failing_call):
    real = getattr(os, failing_call)

    def broken(*args):
        raise OSError(errno.EIO, "Input/output error")

    # The datasync thread calls fdatasync(2) from C; route it through os.fdatasync to break it.
    monkeypatch.setattr(partition_module, "datasync_override", lambda fd: os.fdatasync(fd))

    async def scenario():
        part, _ = reopen(str(tmp_path))
        monkeypatch.setattr(os, failing_call, broken)
        results = await asyncio.gather(*(enqueue_many(part, 1, first=n) for n in range(20)),
                                       return_exceptions=True)
        monkeypatch.setattr(os, failing_call, real)
        failed_stats = part.stats
        queued = await enqueue_many(part, 5, first=100)
        stats = part.stats
        await part.close()
        return results, failed_stats, queued, stats

    results, failed_stats, queued, stats = run(scenario())
    assert all(isinstance(result, QueueWriteError) for result in results)
    assert "Input/output error" in str(results[0])
    assert failed_stats["messages"] == 0 and failed_stats["failed_commits"] >= 1
    # Each failed batch leaves its segment in an unknown state: the next batch starts a new one.
    assert stats["segments_created"] == 1 + failed_stats["failed_commits"]
    part, _ = reopen(str(tmp_path))
    for queue_id, (envelope, content) in queued.items():
        assert part.read_content(queue_id) == content


def test_segments_roll_over_and_final_ones_are_removed(tmp_path, run):
    async def scenario():
        part, _ = reopen(str(tmp_path), segment_size=4096)
        queued = {}
        for group in range(12):  # a batch never spans segments: roll over between batches
            queued.update(await enqueue_many(part, 10, first=group * 10))
        first_id = min(queued)
        await part.set_state(first_id, "hold")  # oldest segment stays: its message is live
        for queue_id in sorted(queued)[1:100]:
            await part.set_state(queue_id, "delete")
            del queued[queue_id]
        stats = part.stats
        await part.close()
        return queued, first_id, stats

    queued, first_id, stats = run(scenario())
    assert stats["segments_created"] > 5
    assert stats["segments_removed"] > 0
    on_disk = list_segments(partition_directory(str(tmp_path), 0))
    assert len(on_disk) == stats["segments_created"] - stats["segments_removed"]
    part, report = reopen(str(tmp_path), segment_size=4096)
    assert_holds(part, queued)
    assert part.entries[first_id].queue_name == "hold"
    assert report.messages == 21


def test_state_changes_replay(tmp_path, run):
    async def scenario():
        part, _ = reopen(str(tmp_path))
        ids = []
        for number in range(5):
            envelope = make_envelope(part, number, recipients=3)
            await part.enqueue(envelope, make_content(number))
            ids.append(envelope.queue_id)
        await part.set_state(ids[0], "hold", "held by admin")
        await part.set_state(ids[1], "deferred", "connect to mx.example.net[192.0.2.9]:25: Connection refused",
                             next_retry=2e9, recipients=[0, 2])
        await part.set_state(ids[1], "done", recipients=[1])
        await part.set_state(ids[2], "delete")
        await part.set_state(ids[3], "done")
        await part.set_state(ids[4], "hold")
        await part.set_state(ids[4], "release")
        with pytest.raises(ValueError):
            await part.set_state(ids[1], "release")
        with pytest.raises(KeyError):
            await part.set_state(ids[2], "hold")
        await part.set_state(ids[1], "active")
        await part.close()
        return ids

    ids = run(scenario())
    part, report = reopen(str(tmp_path))
    assert report.messages == 3
    assert set(part.entries) == {ids[0], ids[1], ids[4]}
    assert part.entries[ids[0]].queue_name == "hold"
    deferred = part.entries[ids[1]]
    # An active message after a restart is no longer being delivered: incoming again.
    assert deferred.queue_name == "incoming"
    assert deferred.pending_recipients() == [0, 2]
    assert deferred.reasons[0] == deferred.reasons[2] == "connect to mx.example.net[192.0.2.9]:25: Connection refused"
    assert deferred.next_retry == 2e9
    assert part.entries[ids[4]].queue_name == "deferred"


def test_new_ids_stay_above_the_recovered_ones(tmp_path, run):
    async def scenario():
        part, _ = reopen(str(tmp_path))
        envelope = make_envelope(part, 1)
        envelope.queue_id = f"{(time.time_ns() // 1000 + 3600 * 10**6) << 8:015X}"  # an hour ahead
        await part.enqueue(envelope, b"x\r\n")
        await part.close()
        return envelope.queue_id

    future_id = run(scenario())
    part, _ = reopen(str(tmp_path))
    assert part.new_queue_id() > future_id


def last_segment(directory, index=0):
    return list_segments(partition_directory(directory, index))[-1][1]


def test_torn_tail_is_truncated(tmp_path, run):
    async def scenario():
        part, _ = reopen(str(tmp_path))
        queued = {}
        for number in range(5):
            queued.update(await enqueue_many(part, 1, first=number))
        await part.close()
        return queued

    queued = run(scenario())
    newest = max(queued)
    path = last_segment(str(tmp_path))
    size = os.path.getsize(path)
    os.truncate(path, size - 7)  # the crash cut the last record short
    del queued[newest]
    part, report = reopen(str(tmp_path))
    assert report.truncated_bytes == size - 7 - (os.path.getsize(path))
    assert report.truncated_bytes > 0 and report.corrupt_records == 0
    assert_holds(part, queued)
    assert not os.path.exists(os.path.join(tmp_path, "corrupt"))
    _, again = reopen(str(tmp_path))
    assert again.truncated_bytes == 0 and again.messages == 4


@pytest.mark.parametrize("where", ["payload", "length"])
def test_damaged_middle_record_goes_to_corrupt_and_the_rest_recovers(tmp_path, run, where):
    async def scenario():
        part, _ = reopen(str(tmp_path))
        queued = {}
        for number in range(5):
            queued.update(await enqueue_many(part, 1, first=number))
        await part.close()
        return queued

    queued = run(scenario())
    part, _ = reopen(str(tmp_path))
    victim = sorted(queued)[2]
    entry = part.entries[victim]
    record_start = entry.content_offset - HEADER_SIZE - 4 - len(encode_envelope(entry.envelope))
    record_end = entry.content_offset + entry.content_length
    path = os.path.join(part.directory, f"segment.{entry.segment:016X}")
    with open(path, "rb") as segment:
        original = segment.read()
    flip_at = entry.content_offset + 5 if where == "payload" else record_start + 8
    damaged = bytearray(original)
    damaged[flip_at] ^= 0x40
    with open(path, "wb") as segment:
        segment.write(damaged)
    del queued[victim]

    part, report = reopen(str(tmp_path))
    assert report.corrupt_records == 1 and report.truncated_bytes == 0
    assert_holds(part, queued)
    corrupt = os.listdir(os.path.join(tmp_path, "corrupt"))
    assert corrupt == [f"partition.0.segment.{entry.segment:016X}.offset.{record_start}"]
    with open(os.path.join(tmp_path, "corrupt", corrupt[0]), "rb") as saved:
        saved_bytes = saved.read()
    assert saved_bytes == bytes(damaged[record_start:record_end])


CHILD = textwrap.dedent("""
    import asyncio, sys, time, uvloop
    from pyfastmta.queue.envelope import Envelope, Recipient, encode_envelope
    from pyfastmta.queue.partition import Partition

    async def main(directory, first):
        part = Partition(directory, 0)
        part.recover()
        print("ready", flush=True)

        async def sender(worker):
            number = first + worker * 100000
            while True:
                envelope = Envelope(part.new_queue_id(), f"s{number}@example.org",
                                    [Recipient(f"r{number}@example.net")], time.time())
                await part.enqueue(envelope, b"message %d\\r\\n" % number * 30)
                sys.stdout.write(f"{envelope.queue_id} {number}\\n")
                sys.stdout.flush()
                number += 1

        await asyncio.gather(*(sender(w) for w in range(20)))

    factory = uvloop.new_event_loop if sys.argv[3] == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main(sys.argv[1], int(sys.argv[2])))
""")


def test_every_acknowledged_message_survives_sigkill(tmp_path, loop_kind):
    environment = dict(os.environ)
    acknowledged = {}
    for round_number in range(3):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), str(round_number * 10**7), loop_kind],
                                 stdout=subprocess.PIPE, env=environment, text=True, cwd=tmp_path)
        try:
            assert child.stdout.readline() == "ready\n"
            time.sleep(random.uniform(0.05, 0.4))
        finally:
            os.kill(child.pid, signal.SIGKILL)
            output, _ = child.communicate()
        lines = output.splitlines()
        # Only complete lines are acknowledgements; the kill may cut the last one.
        if output and not output.endswith("\n"):
            lines.pop()
        for line in lines:
            queue_id, number = line.split()
            acknowledged[queue_id] = int(number)
        part, report = reopen(str(tmp_path))
        missing = [queue_id for queue_id in acknowledged if queue_id not in part.entries]
        assert missing == []
        for queue_id, number in random.sample(sorted(acknowledged.items()), 50):
            assert part.read_content(queue_id) == b"message %d\r\n" % number * 30
        assert report.corrupt_records == 0
    assert len(acknowledged) > 100
