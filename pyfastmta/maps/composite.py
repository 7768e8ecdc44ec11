"""unionmap:{t1, t2, ...} and pipemap:{t1, t2, ...} — tables made of other tables.

unionmap gives the query to every table in order and joins what they found with commas; it finds
nothing when none of them does. pipemap gives the query to the first table, each result becomes
the query of the next table, and the last table's result is the answer; a table that finds
nothing ends the pipeline with nothing.

As in Postfix, the first table decides how the composite is searched: a pattern first table makes
the composite a pattern table (whole keys only), and with smtputf8_enable a fixed first table has
the query case-folded once before any table sees it. A failing table fails the lookup.
"""

from __future__ import annotations

from pyfastmta.maps import registry
from pyfastmta.maps.inline import braced_list, split_braced_list
from pyfastmta.maps.source import fold_key
from pyfastmta.maps.table import Table, TableError


class CompositeTable(Table):
    def __init__(self, name: str, parts: list[Table], smtputf8_enable: bool) -> None:
        super().__init__(name)
        self.parts = parts
        self.pattern = parts[0].pattern
        self.fold = parts[0].fold
        # Postfix folds the composite's query only through its UTF-8 layer; without
        # smtputf8_enable each part folds (or not) by itself.
        self._fold_query = smtputf8_enable and self.fold

    def changed(self) -> bool:
        return any(part.changed() for part in self.parts)

    def close(self) -> None:
        for part in self.parts:
            part.close()


class UnionTable(CompositeTable):
    kind = "unionmap"

    def get(self, key: str) -> str | None:
        if self._fold_query:
            key = fold_key(key)
        joined = ""
        for part in self.parts:
            value = part.get(key)
            if value is None:
                continue
            # Postfix's join: a comma before every result once something is collected, so an
            # empty first result leaves no mark and an empty later one leaves a doubled comma.
            joined = f"{joined},{value}" if joined else value
        return joined or None


class PipeTable(CompositeTable):
    kind = "pipemap"

    def get(self, key: str) -> str | None:
        if self._fold_query:
            key = fold_key(key)
        value: str | None = key
        for part in self.parts:
            value = part.get(value)
            if value is None:
                return None
        return value


def _open_parts(kind: str, name: str, options) -> list[Table]:
    expected = "{type:name, ...}"
    specs = split_braced_list(braced_list(kind, name, expected))
    if not specs or any(":" not in spec for spec in specs):
        raise TableError(f'{kind}:{name}: bad syntax; expected "{kind}:{expected}"')
    parts: list[Table] = []
    try:
        for spec in specs:
            parts.append(registry.open_table(spec, options))
    except TableError as error:
        for part in parts:
            part.close()
        raise TableError(f"{kind}:{name}: {error}") from None
    return parts


def open_unionmap(name: str, options) -> UnionTable:
    return UnionTable(name, _open_parts("unionmap", name, options), options.smtputf8_enable)


def open_pipemap(name: str, options) -> PipeTable:
    return PipeTable(name, _open_parts("pipemap", name, options), options.smtputf8_enable)
