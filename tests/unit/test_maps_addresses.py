"""Address searches in Postfix's order (mail_addr_find): keys, extensions, local domains, and
pattern tables that see only the whole address."""

import pytest

from pyfastmta.maps import Maps, open_table
from pyfastmta.maps.addresses import AddressSearch, split_extension

LOCAL = {"example.net", "[127.0.0.1]"}


def search(delimiter: str = "+") -> AddressSearch:
    return AddressSearch(recipient_delimiter=delimiter, myorigin="origin.example",
                         is_local=lambda domain: domain.lower() in LOCAL)


@pytest.mark.parametrize("address, keys", [
    ("user+ext@remote.example", [("user+ext@remote.example", ""), ("user@remote.example", "+ext"),
                                 ("@remote.example", "")]),
    ("user@remote.example", [("user@remote.example", ""), ("@remote.example", "")]),
    ("user+ext@example.net", [("user+ext@example.net", ""), ("user@example.net", "+ext"),
                              ("user+ext", ""), ("user", "+ext"), ("@example.net", "")]),
    ("user@ORIGIN.example", [("user@ORIGIN.example", ""), ("user", ""), ("@ORIGIN.example", "")]),
    ("user+a+b", [("user+a+b", ""), ("user", "+a+b")]),
    ("user", [("user", "")]),
    # Only the bare names stay whole: "postmaster" is never split, "postmaster+x" is.
    ("postmaster@example.net", [("postmaster@example.net", ""), ("postmaster", ""), ("@example.net", "")]),
    ("postmaster+x@example.net", [("postmaster+x@example.net", ""), ("postmaster@example.net", "+x"),
                                  ("postmaster+x", ""), ("postmaster", "+x"), ("@example.net", "")]),
])
def test_keys_in_postfix_order(address, keys):
    assert search().keys(address) == keys


@pytest.mark.parametrize("local, delimiters, split", [
    ("user+ext", "+", ("user", "+ext")), ("user-ext+x", "+-", ("user", "-ext+x")),
    ("+lead", "+", ("+lead", "")), ("MAILER-DAEMON+x", "+", ("MAILER-DAEMON", "+x")),
    ("MAILER-DAEMON", "+-", ("MAILER-DAEMON", "")), ("double-bounce", "-", ("double-bounce", "")),
    ("owner-list", "-", ("owner-list", "")), ("list-request", "-", ("list-request", "")),
    ("double-bounce+x", "+", ("double-bounce", "+x")), ("plain", "", ("plain", "")),
])
def test_split_extension(local, delimiters, split):
    assert split_extension(local, delimiters) == split


def test_each_key_in_every_table_before_the_next_and_the_cut_extension(tmp_path):
    first = tmp_path / "first"
    first.write_text("@example.net catchall@example.net\n")
    second = tmp_path / "second"
    second.write_text("user@example.net user@mailbox.example\n")
    maps = Maps("virtual_alias_maps", [f"texthash:{first}", f"texthash:{second}"], open_table)
    assert search().find(maps, "user+tag@example.net") == ("user@mailbox.example", "+tag")
    assert search().find(maps, "other@example.net") == ("catchall@example.net", "")
    assert search().find(maps, "other@remote.example") is None
