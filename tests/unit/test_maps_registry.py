"""Table names: `type:name` parsing, lists of tables in a parameter value, unknown types."""

import pytest

from pyfastmta.maps import TableError, open_table, split_table_list, table_types


@pytest.mark.parametrize("text, pieces", [
    ("", []),
    ("hash:/etc/postfix/access", ["hash:/etc/postfix/access"]),
    ("hash:/a, texthash:/b\thash:/c ,, regexp:/d", ["hash:/a", "texthash:/b", "hash:/c", "regexp:/d"]),
    ("inline:{a=b, c=d} hash:/x", ["inline:{a=b, c=d}", "hash:/x"]),
    ("inline:{ { key = text with spaces }, b=c }", ["inline:{ { key = text with spaces }, b=c }"]),
    ("unionmap:{hash:/a, inline:{x=y}},pipemap:{inline:{a=b}, inline:{b=c}}",
     ["unionmap:{hash:/a, inline:{x=y}}", "pipemap:{inline:{a=b}, inline:{b=c}}"]),
])
def test_split_table_list_keeps_brace_groups_whole(text, pieces):
    assert split_table_list(text) == pieces


def test_unbalanced_brace_is_an_error():
    with pytest.raises(TableError, match="missing '}'"):
        split_table_list("inline:{a=b, c=d")


@pytest.mark.parametrize("spec", ["/etc/postfix/access", "hash:", ":/etc/x"])
def test_a_name_without_type_is_an_error(spec):
    with pytest.raises(TableError, match='"type:name"'):
        open_table(spec)


def test_unknown_type_names_the_supported_ones():
    with pytest.raises(TableError) as caught:
        open_table("btree:/etc/postfix/access")
    assert "unsupported dictionary type: btree" in str(caught.value)
    assert all(kind in str(caught.value) for kind in ("hash", "texthash", "regexp", "cidr"))
    assert set(table_types()) >= {"hash", "texthash", "inline", "static", "regexp", "pcre", "cidr",
                                  "unionmap", "pipemap", "socketmap", "redis"}
