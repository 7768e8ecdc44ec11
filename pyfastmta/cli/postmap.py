"""`pyfastmta postmap`, `pyfastmta postalias` and `pyfastmta newaliases`, with Postfix's options
and exit codes: 0 success (and a key found by -q or -d), 1 a key not found, or a fatal error
(Postfix exits 1 for both).

    postmap [-fiNnoprsuUvw] [-c config_dir] [-d key | -d -] [-q key | -q -] [type:]file ...

The default type is hash (Postfix's default_database_type); a hash: source file is compiled into
file.pfm. -q works with every table type pyfastmta has; -s with the types that can list their
entries (hash:); -d and -i with hash:. -N and -n (store the terminating null byte or not) are
accepted and change nothing: the file format stores lengths. -o (keep root privileges) and -v
are accepted too. -b, -h, -m (message query modes) and -F (base64 values) are not supported.
"""

from __future__ import annotations

import getopt
import os
import sys

from pyfastmta._ext.hashtable import HashFileError
from pyfastmta.maps import TableError, open_table
from pyfastmta.maps.registry import TableOptions, parse_spec
from pyfastmta.maps.source import fold_key

OPTIONS = "bc:d:fFhimnNopq:rsuUvw"


class Fatal(Exception):
    pass


def _usage(program: str) -> str:
    return (f"usage: {program} [-bfFhimnNoprsuUvw] [-c config_dir] [-d key] [-q key] "
            "[map_type:]file...")


def main_cf(config_dir: str | None):
    """The parameters of config_dir/main.cf (the embedded defaults when None). Like Postfix's
    postmap, these commands need no master.cf."""
    from pyfastmta.config import Config, ConfigError, load_config
    from pyfastmta.config.maincf import read_main_cf

    try:
        if config_dir is None:
            return load_config(None)
        directory = os.path.abspath(config_dir)
        path = os.path.join(directory, "main.cf")
        return Config(read_main_cf(path, []), directory, path, None)
    except ConfigError as error:
        raise Fatal(str(error)) from None


def _options(config_dir: str | None, utf8: bool) -> TableOptions:
    config = main_cf(config_dir)
    return TableOptions(smtputf8_enable=bool(config.get("smtputf8_enable")) and utf8,
                        config_directory=config_dir or "")


def run(argv: list[str], config_dir: str | None, program: str = "postmap") -> int:
    try:
        return _run(argv, config_dir, program)
    except Fatal as error:
        print(f"{program}: fatal: {error}", file=sys.stderr)
        return 1


def _write(text: str) -> None:
    # Keys and values are bytes as the file holds them; undecodable ones go out unchanged.
    sys.stdout.buffer.write(text.encode("utf-8", "surrogateescape"))


def _separator(program: str) -> str:
    # postalias lists an alias the way it is written, name and colon first.
    return ":\t" if program == "postalias" else "\t"


def _warn(program: str, warnings) -> None:
    for warning in warnings:
        print(f"{program}: warning: {warning}", file=sys.stderr)


def _run(argv: list[str], config_dir: str | None, program: str) -> int:
    try:
        options, names = getopt.getopt(argv, OPTIONS)
    except getopt.GetoptError as error:
        print(f"{program}: {error}", file=sys.stderr)
        raise Fatal(_usage(program)) from None
    fold, incremental, inherit_mode, utf8 = True, False, True, True
    on_duplicate = "warn"
    query = delete = None
    sequence = False
    for option, value in options:
        if option == "-c":
            config_dir = value
        elif option == "-f":
            fold = False
        elif option == "-i":
            incremental = True
        elif option == "-p":
            inherit_mode = False
        elif option == "-r":
            on_duplicate = "replace"
        elif option == "-w":
            on_duplicate = "ignore"
        elif option == "-u":
            utf8 = False
        elif option == "-q":
            if query is not None or delete is not None or sequence:
                raise Fatal("specify only one of -s or -q or -d")
            query = value
        elif option == "-d":
            if query is not None or delete is not None or sequence:
                raise Fatal("specify only one of -s or -q or -d")
            delete = value
        elif option == "-s":
            if query is not None or delete is not None:
                raise Fatal("specify only one of -s or -q or -d")
            sequence = True
        elif option in ("-b", "-h", "-m", "-F"):
            raise Fatal(f"option {option} is not supported by pyfastmta {program}")
        # -N, -n, -o, -U, -v: nothing to do (see the module's description).
    if not names:
        raise Fatal(_usage(program))
    table_options = _options(config_dir, utf8)
    specs = [name if ":" in name else f"hash:{name}" for name in names]
    if query is not None:
        return _query(program, specs, query, table_options, fold)
    if sequence:
        return _sequence(program, specs, table_options, fold)
    if delete is not None:
        return _delete(program, specs, delete, table_options, fold, inherit_mode)
    for spec in specs:
        _create(program, spec, table_options, fold, on_duplicate, inherit_mode, incremental)
    return 0


def _hash_name(spec: str, action: str) -> str:
    try:
        kind, name = parse_spec(spec)
    except TableError as error:
        raise Fatal(str(error)) from None
    if kind != "hash":
        raise Fatal(f"unsupported dictionary type: {kind} does not support {action}")
    return name


def _open(spec: str, options: TableOptions, fold: bool):
    try:
        kind, name = parse_spec(spec)
        if kind == "hash":
            from pyfastmta.maps.hashfile import open_hash

            return open_hash(name, options, fold=fold)
        return open_table(spec, options)
    except TableError as error:
        raise Fatal(str(error)) from None


def _query(program: str, specs: list[str], query: str, options: TableOptions, fold: bool) -> int:
    tables = [_open(spec, options, fold) for spec in specs]
    for table in tables:
        _warn(program, getattr(table, "warnings", ()))
    try:
        if query != "-":
            for table in tables:
                value = table.get(query)
                if value is not None:
                    _write(f"{value}\n")
                    return 0
            return 1
        found = False
        for line in sys.stdin.buffer:
            key = line.rstrip(b"\n").decode("utf-8", "surrogateescape")
            for table in tables:
                value = table.get(key)
                if value is not None:
                    _write(f"{key}{_separator(program)}{value}\n")
                    found = True
                    break
        sys.stdout.buffer.flush()
        return 0 if found else 1
    except TableError as error:
        raise Fatal(str(error)) from None
    except HashFileError as error:  # a damaged file, found during a lookup
        raise Fatal(str(error)) from None
    finally:
        for table in tables:
            table.close()


def _sequence(program: str, specs: list[str], options: TableOptions, fold: bool) -> int:
    for spec in specs:
        table = _open(spec, options, fold)
        items = getattr(table, "items", None)
        if items is None:
            raise Fatal(f"table {spec}: sequence operation is not supported")
        try:
            for key, value in items():
                _write(f"{key}{_separator(program)}{value}\n")
        except HashFileError as error:
            raise Fatal(str(error)) from None
        finally:
            table.close()
    sys.stdout.buffer.flush()
    return 0


def _delete(program: str, specs: list[str], delete: str, options: TableOptions, fold: bool,
            inherit_mode: bool) -> int:
    from pyfastmta.maps.hashfile import rewrite

    if delete == "-":
        keys = [line.rstrip(b"\n").decode("utf-8", "surrogateescape") for line in sys.stdin.buffer]
    else:
        keys = [delete]
    wanted = [(fold_key(key, options.smtputf8_enable) if fold else key).encode("utf-8", "surrogateescape")
              for key in keys]
    found = False
    for spec in specs:
        name = _hash_name(spec, "deletion")
        try:
            _, deleted, warnings = rewrite(name, fold=fold, smtputf8=options.smtputf8_enable,
                                           delete=wanted, inherit_mode=inherit_mode)
        except TableError as error:
            raise Fatal(str(error)) from None
        _warn(program, warnings)
        found = found or bool(deleted)
    return 0 if found else 1


def _create(program: str, spec: str, options: TableOptions, fold: bool, on_duplicate: str,
            inherit_mode: bool, incremental: bool) -> None:
    name = _hash_name(spec, "bulk-mode creation")
    smtputf8 = options.smtputf8_enable
    try:
        if incremental:
            from pyfastmta.maps.hashfile import rewrite

            source = sys.stdin.buffer.read()
            if program == "postalias":
                from pyfastmta.maps.aliases import add_aliases

                def add(writer):
                    return add_aliases(writer, source, "stdin", fold=fold, smtputf8=smtputf8)
            else:
                def add(writer):
                    return writer.add_source(source, fold, smtputf8)
            _, _, warnings = rewrite(name, fold=fold, smtputf8=smtputf8, on_duplicate=on_duplicate,
                                     add=add, source_label="stdin", inherit_mode=inherit_mode,
                                     create=True)
        elif program == "postalias":
            from pyfastmta.maps.aliases import compile_aliases

            _, warnings = compile_aliases(name, fold=fold, smtputf8=smtputf8,
                                          on_duplicate=on_duplicate, inherit_mode=inherit_mode)
        else:
            from pyfastmta.maps.hashfile import compile_source

            _, warnings = compile_source(name, fold=fold, smtputf8=smtputf8,
                                         on_duplicate=on_duplicate, inherit_mode=inherit_mode)
    except TableError as error:
        raise Fatal(str(error)) from None
    _warn(program, warnings)


def run_newaliases(argv: list[str], config_dir: str | None) -> int:
    """newaliases: postalias for every hash: table in $alias_database."""
    from pyfastmta.maps import split_table_list

    program = "newaliases"
    try:
        options, rest = getopt.getopt(argv, "c:v")
    except getopt.GetoptError as error:
        print(f"{program}: fatal: {error}", file=sys.stderr)
        return 1
    for option, value in options:
        if option == "-c":
            config_dir = value
    try:
        config = main_cf(config_dir)
    except Fatal as error:
        print(f"{program}: fatal: {error}", file=sys.stderr)
        return 1
    specs = split_table_list(config.expanded("alias_database"))
    if not specs:
        return 0
    return run(specs, config_dir, "postalias")
