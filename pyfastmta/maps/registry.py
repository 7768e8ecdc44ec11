"""`type:name` → an open table. Each type lives in its own module, imported when first used (so a
worker that has no redis: table never imports the Redis client)."""

from __future__ import annotations

import importlib

from pyfastmta.maps.table import Maps, Table, TableError

# type → "module:factory"; factory(name, options) -> Table
_TYPES = {
    "hash": "pyfastmta.maps.hashfile:open_hash",
    "texthash": "pyfastmta.maps.texthash:open_texthash",
    "inline": "pyfastmta.maps.inline:open_inline",
    "static": "pyfastmta.maps.inline:open_static",
    "regexp": "pyfastmta.maps.regexp:open_regexp",
    "pcre": "pyfastmta.maps.regexp:open_pcre",
    "cidr": "pyfastmta.maps.cidr:open_cidr",
    "unionmap": "pyfastmta.maps.composite:open_unionmap",
    "pipemap": "pyfastmta.maps.composite:open_pipemap",
    "socketmap": "pyfastmta.maps.socketmap:open_socketmap",
    "redis": "pyfastmta.maps.redis:open_redis",
}


def table_types() -> list[str]:
    return sorted(_TYPES)


class TableOptions:
    """What tables need from the configuration. smtputf8_enable: full Unicode case folding of
    keys (ASCII only when off), as Postfix's tables fold. no_regsub: a regexp:/pcre: rule whose
    result has $number is skipped with a warning, so no text from the key reaches the result
    (Postfix's no_regsub flag, which it sets for transport_maps and a few others).
    duplicates_fail: a key repeated in a texthash: file makes the table fail to open, as in
    Postfix's daemons (postmap -q only warns)."""

    __slots__ = ("config_directory", "duplicates_fail", "no_regsub", "smtputf8_enable")

    def __init__(self, *, smtputf8_enable: bool = True, config_directory: str = "",
                 no_regsub: bool = False, duplicates_fail: bool = False) -> None:
        self.smtputf8_enable = smtputf8_enable
        self.config_directory = config_directory
        self.no_regsub = no_regsub
        self.duplicates_fail = duplicates_fail


def parse_spec(spec: str) -> tuple[str, str]:
    """("type", "name") of "type:name"; a TableError for anything else."""
    kind, colon, name = spec.strip().partition(":")
    if not colon or not kind or not name:
        raise TableError(f'{spec}: a table is named "type:name", for example hash:/etc/postfix/access')
    return kind.lower(), name


def open_table(spec: str, options: TableOptions | None = None) -> Table:
    kind, name = parse_spec(spec)
    target = _TYPES.get(kind)
    if target is None:
        raise TableError(f"{spec}: unsupported dictionary type: {kind} "
                         f"(supported: {', '.join(table_types())})")
    module_name, _, factory = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, factory)(name, options or TableOptions())


def split_table_list(text: str) -> list[str]:
    """A parameter's tables, separated by commas or whitespace; a `{...}` group (inline:,
    unionmap:, pipemap:) is one piece however many commas and spaces it holds."""
    pieces: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "{":
            depth += 1
        elif char == "}" and depth:
            depth -= 1
        if depth == 0 and (char == "," or char.isspace()):
            if current:
                pieces.append("".join(current))
                current = []
            continue
        current.append(char)
    if depth:
        raise TableError(f"{text}: missing '}}'")
    if current:
        pieces.append("".join(current))
    return pieces


# Parameters whose regexp:/pcre: results must not carry text from the key (Postfix opens them
# with its no_regsub flag): they name programs and next hops.
NO_REGSUB_PARAMETERS = frozenset({
    "transport_maps", "sender_dependent_relayhost_maps", "sender_dependent_default_transport_maps",
    "address_verify_transport_maps", "address_verify_sender_dependent_relayhost_maps",
    "address_verify_sender_dependent_default_transport_maps", "mailbox_transport_maps",
    "fallback_transport_maps", "alias_maps", "mailbox_command_maps", "virtual_mailbox_maps",
    "virtual_uid_maps", "virtual_gid_maps",
})


def parameter_maps(config, parameter: str, warn=None) -> Maps:
    """A table-valued parameter's tables, opened (any type); a table that cannot be opened is a
    ConfigError naming main.cf and the parameter."""
    from pyfastmta.config import ConfigError

    options = TableOptions(smtputf8_enable=config.get("smtputf8_enable"),
                           config_directory=config.config_dir or "",
                           no_regsub=parameter in NO_REGSUB_PARAMETERS, duplicates_fail=True)
    try:
        return Maps(parameter, split_table_list(config.expanded(parameter)),
                    lambda spec: open_table(spec, options), warn)
    except TableError as error:
        raise ConfigError(config.main_cf_path, None, f"{parameter}: {error}") from None
