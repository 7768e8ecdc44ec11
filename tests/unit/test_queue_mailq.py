"""postqueue -p and -j output, compared with what Postfix 3.7's postqueue printed.

POSTFIX_JSON and POSTFIX_MAILQ (and the *_LONG_IDS pair) were printed by Postfix 3.7.11's
`postqueue -j` and `postqueue -p` for the same queue (TZ=UTC): deferred messages with delay
reasons of many lengths, one message moved to the active queue, one to incoming, one on hold, a
null sender, a quoted local part, UTF-8 addresses and Postfix's own queue IDs. Each JSON line is turned into a QueuedMessage; our
formatters must print both texts back exactly.
"""

import asyncio
import json
import os
import time

import pytest

from pyfastmta.cli import postqueue
from pyfastmta.queue.envelope import Envelope, Recipient
from pyfastmta.queue.listing import QueuedMessage, QueuedRecipient, scan_queue
from pyfastmta.queue.mailq import format_json_lines, format_mailq, quote_address
from pyfastmta.queue.partition import Partition
from pyfastmta.queue.record import encode_message

POSTFIX_JSON = r"""{"queue_name": "active", "queue_id": "D5FC020C213", "arrival_time": 1795437947, "message_size": 256, "forced_expire": false, "sender": "MAILER-DAEMON", "recipients": [{"address": "erin@example.net", "delay_reason": "connect to 127.0.0.1[127.0.0.1]:1: Connection refused"}]}
{"queue_name": "incoming", "queue_id": "D894E20C215", "arrival_time": 1795437947, "message_size": 269, "forced_expire": false, "sender": "\"john doe\"@example.org", "recipients": [{"address": "frank@example.net", "delay_reason": "connect to 127.0.0.1[127.0.0.1]:1: Connection refused"}]}
{"queue_name": "deferred", "queue_id": "84DF720C123", "arrival_time": 1795437970, "message_size": 260, "forced_expire": false, "sender": "s@example.org", "recipients": [{"address": "t@r80.example", "delay_reason": "01234567890123456789012345678901234567890123456789012345678901234567890123456789"}]}
{"queue_name": "deferred", "queue_id": "8A60D20C133", "arrival_time": 1795437970, "message_size": 262, "forced_expire": false, "sender": "mix@example.org", "recipients": [{"address": "a@r1.example", "delay_reason": "x"}, {"address": "b@r1.example", "delay_reason": "x"}, {"address": "d@r1.example", "delay_reason": "x"}, {"address": "c@r10.example", "delay_reason": "abcdefghij"}]}
{"queue_name": "deferred", "queue_id": "87A6920C124", "arrival_time": 1795437970, "message_size": 261, "forced_expire": false, "sender": "s@example.org", "recipients": [{"address": "t@r150.example", "delay_reason": "this is a much longer reason text with spaces in it that goes on and on beyond the width of a terminal line and further still yes"}]}
{"queue_name": "deferred", "queue_id": "822F920C104", "arrival_time": 1795437970, "message_size": 260, "forced_expire": false, "sender": "s@example.org", "recipients": [{"address": "t@r57.example", "delay_reason": "012345678901234567890123456789012345678901234567890123456"}]}
{"queue_name": "deferred", "queue_id": "96B7E20C0D3", "arrival_time": 1795437993, "message_size": 261, "forced_expire": false, "sender": "ab@example.org", "recipients": [{"address": "x@r1.example", "delay_reason": "x"}]}
{"queue_name": "deferred", "queue_id": "931B220C097", "arrival_time": 1795437993, "message_size": 265, "forced_expire": false, "sender": "jörg@exämple.org", "recipients": [{"address": "ünï@r1.example", "delay_reason": "x"}]}
{"queue_name": "deferred", "queue_id": "D317220C20F", "arrival_time": 1795437947, "message_size": 216302, "forced_expire": false, "sender": "very.long.sender.address.for.testing@sub.domain.example.org", "recipients": [{"address": "dave@example.net", "delay_reason": "connect to 127.0.0.1[127.0.0.1]:1: Connection refused"}]}
{"queue_name": "deferred", "queue_id": "6EDEB20C095", "arrival_time": 1795437970, "message_size": 260, "forced_expire": false, "sender": "s@example.org", "recipients": [{"address": "t@r40.example", "delay_reason": "0123456789012345678901234567890123456789"}]}
{"queue_name": "deferred", "queue_id": "6CBDF20C082", "arrival_time": 1795437970, "message_size": 260, "forced_expire": false, "sender": "s@example.org", "recipients": [{"address": "t@r10.example", "delay_reason": "abcdefghij"}]}
{"queue_name": "deferred", "queue_id": "676B320C083", "arrival_time": 1795437970, "message_size": 259, "forced_expire": false, "sender": "s@example.org", "recipients": [{"address": "t@r1.example", "delay_reason": "x"}]}
{"queue_name": "deferred", "queue_id": "7F53C20C0F6", "arrival_time": 1795437970, "message_size": 260, "forced_expire": false, "sender": "s@example.org", "recipients": [{"address": "t@r56.example", "delay_reason": "01234567890123456789012345678901234567890123456789012345"}]}
{"queue_name": "deferred", "queue_id": "75D9220C0E3", "arrival_time": 1795437970, "message_size": 260, "forced_expire": false, "sender": "s@example.org", "recipients": [{"address": "t@r54.example", "delay_reason": "012345678901234567890123456789012345678901234567890123"}]}
{"queue_name": "deferred", "queue_id": "7C8E120C0F5", "arrival_time": 1795437970, "message_size": 260, "forced_expire": false, "sender": "s@example.org", "recipients": [{"address": "t@r55.example", "delay_reason": "0123456789012345678901234567890123456789012345678901234"}]}
{"queue_name": "hold", "queue_id": "B970720C20A", "arrival_time": 1795437947, "message_size": 265, "forced_expire": false, "sender": "alice@example.org", "recipients": [{"address": "carol@example.com", "delay_reason": "connect to 127.0.0.1[127.0.0.1]:1: Connection refused"}, {"address": "bob@example.net", "delay_reason": "connect to 127.0.0.1[127.0.0.1]:1: Connection refused"}]}
"""

POSTFIX_MAILQ = """-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------
D5FC020C213*     256 Mon Nov 23 12:45:47  MAILER-DAEMON
                       (connect to 127.0.0.1[127.0.0.1]:1: Connection refused)
                                         erin@example.net

D894E20C215     269 Mon Nov 23 12:45:47  "john doe"@example.org
                       (connect to 127.0.0.1[127.0.0.1]:1: Connection refused)
                                         frank@example.net

84DF720C123     260 Mon Nov 23 12:46:10  s@example.org
(01234567890123456789012345678901234567890123456789012345678901234567890123456789)
                                         t@r80.example

8A60D20C133     262 Mon Nov 23 12:46:10  mix@example.org
                                                                           (x)
                                         a@r1.example
                                         b@r1.example
                                         d@r1.example
                                                                  (abcdefghij)
                                         c@r10.example

87A6920C124     261 Mon Nov 23 12:46:10  s@example.org
(this is a much longer reason text with spaces in it that goes on and on beyond the width of a terminal line and further still yes)
                                         t@r150.example

822F920C104     260 Mon Nov 23 12:46:10  s@example.org
                   (012345678901234567890123456789012345678901234567890123456)
                                         t@r57.example

96B7E20C0D3     261 Mon Nov 23 12:46:33  ab@example.org
                                                                           (x)
                                         x@r1.example

931B220C097     265 Mon Nov 23 12:46:33  jörg@exämple.org
                                                                           (x)
                                         ünï@r1.example

D317220C20F  216302 Mon Nov 23 12:45:47  very.long.sender.address.for.testing@sub.domain.example.org
                       (connect to 127.0.0.1[127.0.0.1]:1: Connection refused)
                                         dave@example.net

6EDEB20C095     260 Mon Nov 23 12:46:10  s@example.org
                                    (0123456789012345678901234567890123456789)
                                         t@r40.example

6CBDF20C082     260 Mon Nov 23 12:46:10  s@example.org
                                                                  (abcdefghij)
                                         t@r10.example

676B320C083     259 Mon Nov 23 12:46:10  s@example.org
                                                                           (x)
                                         t@r1.example

7F53C20C0F6     260 Mon Nov 23 12:46:10  s@example.org
                    (01234567890123456789012345678901234567890123456789012345)
                                         t@r56.example

75D9220C0E3     260 Mon Nov 23 12:46:10  s@example.org
                      (012345678901234567890123456789012345678901234567890123)
                                         t@r54.example

7C8E120C0F5     260 Mon Nov 23 12:46:10  s@example.org
                     (0123456789012345678901234567890123456789012345678901234)
                                         t@r55.example

B970720C20A!     265 Mon Nov 23 12:45:47  alice@example.org
                       (connect to 127.0.0.1[127.0.0.1]:1: Connection refused)
                                         carol@example.com
                                         bob@example.net

-- 215 Kbytes in 16 Requests.
"""


# The same, for IDs as long as ours (15 characters) with enable_long_queue_ids=no, Postfix's
# default: the ID overflows its column and pushes the rest of the line to the right.
POSTFIX_JSON_LONG_IDS = r"""{"queue_name": "maildrop", "queue_id": "4jY5Yd2R4tzJ9R3", "arrival_time": 1795438613, "message_size": 119, "forced_expire": false, "sender": "a@example.org", "recipients": [{"address": "b@example.net"}, {"address": "c@example.net"}]}
{"queue_name": "hold", "queue_id": "4jY5LX4r6vzJ9L1", "arrival_time": 1795438036, "message_size": 254, "forced_expire": false, "sender": "s@example.org", "recipients": [{"address": "t@r1.example", "delay_reason": "x"}]}
"""

POSTFIX_MAILQ_LONG_IDS = """-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------
4jY5Yd2R4tzJ9R3     119 Mon Nov 23 12:56:53  a@example.org
                                         b@example.net
                                         c@example.net

4jY5LX4r6vzJ9L1!     254 Mon Nov 23 12:47:16  s@example.org
                                                                           (x)
                                         t@r1.example

-- 0 Kbytes in 2 Requests.
"""


@pytest.fixture
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def postfix_messages(json_lines=POSTFIX_JSON):
    messages = []
    for line in json_lines.splitlines():
        item = json.loads(line)
        sender = "" if item["sender"] == "MAILER-DAEMON" else item["sender"]
        recipients = [QueuedRecipient(r["address"], r.get("delay_reason")) for r in item["recipients"]]
        messages.append(QueuedMessage(item["queue_id"], item["queue_name"], item["arrival_time"],
                                      item["message_size"], sender, recipients, item["forced_expire"]))
    return messages


def test_mailq_format_matches_postfix(utc):
    assert format_mailq(postfix_messages()) == POSTFIX_MAILQ


def test_json_lines_match_postfix():
    assert format_json_lines(postfix_messages()) == POSTFIX_JSON


def test_ids_longer_than_the_column_match_postfix(utc):
    messages = postfix_messages(POSTFIX_JSON_LONG_IDS)
    assert format_mailq(messages) == POSTFIX_MAILQ_LONG_IDS
    assert format_json_lines(messages) == POSTFIX_JSON_LONG_IDS


def test_empty_queue():
    assert format_mailq([]) == "Mail queue is empty\n"
    assert format_json_lines([]) == ""


def test_single_small_request(utc):
    message = QueuedMessage("0123456789ABC00", "incoming", 0, 300, "a@example.org",
                            [QueuedRecipient("b@example.net")])
    assert format_mailq([message]) == (
        "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------\n"
        "0123456789ABC00     300 Thu Jan  1 00:00:00  a@example.org\n"
        "                                         b@example.net\n"
        "\n"
        "-- 0 Kbytes in 1 Request.\n"
    )


@pytest.mark.parametrize("stored, shown", [
    ("john doe@example.org", '"john doe"@example.org'),
    ('"john doe"@example.org', '"john doe"@example.org'),
    ('a"b@example.org', '"a\\"b"@example.org'),
    ("first.last+tag@example.org", "first.last+tag@example.org"),
    ("jörg@exämple.org", "jörg@exämple.org"),
    ("a..b@example.org", '"a..b"@example.org'),
    ("postmaster", "postmaster"),
])
def test_addresses_are_shown_in_external_form(stored, shown):
    assert quote_address(stored) == shown


async def fill_queue(directory):
    part = Partition(directory, 1)
    part.recover()
    ids = []
    for number, recipients in enumerate([["a@example.net"], ["b@example.net", "c@example.net"], ["d@example.net"],
                                         ["e@example.net"], ["f@example.net"]]):
        envelope = Envelope(part.new_queue_id(), "" if number == 4 else f"s{number}@example.org",
                            [Recipient(address) for address in recipients], 1795437947.5 + number)
        await part.enqueue(envelope, b"x" * (1000 * number + 10))
        ids.append(envelope.queue_id)
    await part.set_state(ids[0], "hold")
    await part.set_state(ids[1], "deferred", "connect to mx.example.net[192.0.2.1]:25: Connection refused",
                         next_retry=1795440000.0, recipients=[1])
    await part.set_state(ids[1], "done", recipients=[0])
    await part.set_state(ids[2], "active")
    await part.set_state(ids[3], "delete")
    await part.close()
    return ids


def test_scan_queue_lists_live_messages_in_postfix_queue_order(tmp_path):
    ids = asyncio.run(fill_queue(str(tmp_path)))
    messages = scan_queue(str(tmp_path))
    assert [(m.queue_id, m.queue_name) for m in messages] == [
        (ids[2], "active"), (ids[4], "incoming"), (ids[1], "deferred"), (ids[0], "hold")]
    deferred = messages[2]
    assert deferred.recipients == [QueuedRecipient(
        "c@example.net", "connect to mx.example.net[192.0.2.1]:25: Connection refused")]
    assert deferred.size == 1010 and deferred.sender == "s1@example.org"
    assert messages[1].sender == ""


def test_postqueue_command(tmp_path, capsys, utc):
    ids = asyncio.run(fill_queue(str(tmp_path)))
    assert postqueue.run(["-p"], str(tmp_path)) == 0
    assert capsys.readouterr().out == (
        "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------\n"
        f"{ids[2]}*    2010 Mon Nov 23 12:45:49  s2@example.org\n"
        "                                         d@example.net\n"
        "\n"
        f"{ids[4]}    4010 Mon Nov 23 12:45:51  MAILER-DAEMON\n"
        "                                         f@example.net\n"
        "\n"
        f"{ids[1]}    1010 Mon Nov 23 12:45:48  s1@example.org\n"
        "                 (connect to mx.example.net[192.0.2.1]:25: Connection refused)\n"
        "                                         c@example.net\n"
        "\n"
        f"{ids[0]}!      10 Mon Nov 23 12:45:47  s0@example.org\n"
        "                                         a@example.net\n"
        "\n"
        "-- 6 Kbytes in 4 Requests.\n"  # 7040 bytes, rounded down as Postfix does
    )
    assert postqueue.run(["-j"], str(tmp_path)) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["queue_id"] for line in lines] == [ids[2], ids[4], ids[1], ids[0]]
    assert lines[2] == {
        "queue_name": "deferred", "queue_id": ids[1], "arrival_time": 1795437948, "message_size": 1010,
        "forced_expire": False, "sender": "s1@example.org",
        "recipients": [{"address": "c@example.net",
                        "delay_reason": "connect to mx.example.net[192.0.2.1]:25: Connection refused"}],
    }
    assert lines[1]["sender"] == "MAILER-DAEMON"


def test_postqueue_usage_and_missing_queue(tmp_path, capsys):
    assert postqueue.run(["-x"], str(tmp_path)) == 1
    assert "usage" in capsys.readouterr().err
    assert postqueue.run(["-p"], str(tmp_path / "missing")) == 1
    assert "fatal" in capsys.readouterr().err
    assert postqueue.run(["-p"], str(tmp_path)) == 0
    assert capsys.readouterr().out == "Mail queue is empty\n"


def test_listing_ignores_a_record_still_being_written(tmp_path):
    ids = asyncio.run(fill_queue(str(tmp_path)))
    segment_directory = os.path.join(tmp_path, "partition.1")
    newest = sorted(os.listdir(segment_directory))[-1]
    path = os.path.join(segment_directory, newest)
    envelope = Envelope("0" * 13 + "01", "late@example.org", [Recipient("z@example.net")], 0.0)
    head, _ = encode_message(envelope, b"y" * 500)
    record = head + b"y" * 500
    with open(path, "ab") as segment:
        segment.write(record[:len(record) // 2])  # a writer is half-way through this record
    size = os.path.getsize(path)
    assert [m.queue_id for m in scan_queue(str(tmp_path))] == [ids[2], ids[4], ids[1], ids[0]]
    assert os.path.getsize(path) == size  # a listing never repairs anything
