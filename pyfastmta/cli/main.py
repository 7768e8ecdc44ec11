"""`pyfastmta [-c config_dir] command [arguments]`."""

from __future__ import annotations

import os
import sys

USAGE = """usage: pyfastmta [-c config_dir] command [arguments]
commands:
  start [--foreground]   start the mail system (start-fg: in the foreground)
  stop | reload | status
  postconf [-d | -n | -h | -x | -M] [name ...]
  postqueue -p | -j      list the queue (mailq: same as postqueue -p)
  postqueue -f | flush   try every deferred message now
  postqueue -s SITE      try the deferred mail for SITE now
  postcat [-ebh] -q ID   show a queued message
  postmap [-fioprsuw] [-q key | -q - | -d key | -d -] [type:]file ...
                         compile a hash: table, or query, list, change tables
  postalias [options] [type:]file ...   the same for aliases(5) files
  newaliases             compile $alias_database
"""


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    config_dir = os.environ.get("MAIL_CONFIG")
    while args and args[0].startswith("-"):
        option = args.pop(0)
        if option == "-c" and args:
            config_dir = args.pop(0)
        elif option in ("-h", "--help"):
            print(USAGE, end="")
            return 0
        else:
            print(f"pyfastmta: unknown option {option}\n{USAGE}", end="", file=sys.stderr)
            return 2
    if not args:
        print(USAGE, end="", file=sys.stderr)
        return 2
    command, rest = args[0], args[1:]

    from pyfastmta.config import ConfigError, load_config

    if command == "postconf":
        from pyfastmta.cli import postconf

        return postconf.run(rest, config_dir)
    if command in ("postmap", "postalias"):
        from pyfastmta.cli import postmap

        return postmap.run(rest, config_dir, command)
    if command == "newaliases":
        from pyfastmta.cli import postmap

        return postmap.run_newaliases(rest, config_dir)
    try:
        config = load_config(config_dir)
    except ConfigError as error:
        print(f"pyfastmta: fatal: {error}", file=sys.stderr)
        return 1
    if command == "flush" or (command == "postqueue" and rest == ["-f"]):
        from pyfastmta.cli import control

        return control.flush(config)
    if command == "postqueue" and len(rest) == 2 and rest[0] == "-s":
        from pyfastmta.cli import control

        return control.flush(config, rest[1])
    if command in ("postqueue", "mailq"):
        from pyfastmta.cli import postqueue

        return postqueue.run(rest if command == "postqueue" else ["-p"] + rest,
                             config.get("queue_directory"))
    if command == "postcat":
        from pyfastmta.cli import postcat

        return postcat.run(rest, config.get("queue_directory"))
    from pyfastmta.cli import control

    if command in ("start", "start-fg"):
        foreground = command == "start-fg" or "--foreground" in rest
        return control.start(config, foreground)
    if command == "stop":
        return control.stop(config)
    if command == "reload":
        return control.reload(config)
    if command == "status":
        return control.status(config)
    print(f"pyfastmta: unknown command: {command}\n{USAGE}", end="", file=sys.stderr)
    return 2
