"""What the `keyrelay` client commands share: their options, their output and their errors.

Conventions every client command follows (and the helpers here implement):

- `--profile FILE` (default `$KEYRELAY_PROFILE`, else `.keyrelay/profile.toml`), `--endpoint
  HOST:PORT` to override the profile's address, and `--output text|json` (`-o`): see
  `common_options()` and `connect()`.
- `--help` says what the command does and ends with an example: `add_command()`, `add_group()`.
- `--output json` prints one JSON document with stable keys: dataclasses as objects (fields hidden
  from `repr`, such as private keys, left out), bytes as base64, datetimes in ISO 8601 UTC
  (`to_plain()`, `format_json()`).
- An expected failure (a `KeyrelayError` from the server, a bad profile, a file that cannot be
  read or written, a `CliError`) prints one line `keyrelay: ...` to stderr and exits 1; a usage
  error exits 2 as argparse does; Ctrl-C exits 130 without a traceback: `guarded()`.

A command is usually `client_command(KmsClient, action, text=...)`: it connects, runs
`action(client, args)` and prints what the action returns (None: the action wrote its output).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import functools
import json
import os
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from client_sdk.credentials import ProfileError, default_profile_path, load_profile
from foundation.config import ConfigError
from foundation.errors import KeyrelayError

OUTPUT_FORMATS = ("text", "json")
#: Exit status of a failed command and of Ctrl-C (argparse exits 2 for a usage error).
EXIT_FAILURE, EXIT_INTERRUPTED = 1, 130

#: Maps a dataclass type to a function giving extra, derived JSON fields of its instances.
Derived = Mapping[type, Callable[[Any], Mapping[str, Any]]]
#: A table column: (header, field name or function of the record).
Column = tuple[str, str | Callable[[Any], Any]]


class CliError(Exception):
    """An expected failure a command reports as one line `keyrelay: MESSAGE` (exit status 1)."""


# -- options and help --------------------------------------------------------------------------


def common_options() -> argparse.ArgumentParser:
    """A parent parser with `--profile`, `--endpoint` and `--output/-o` (use as `parents=[...]`)."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection and output")
    group.add_argument(
        "--profile", metavar="FILE", help="profile file (default: $KEYRELAY_PROFILE, else .keyrelay/profile.toml)"
    )
    group.add_argument(
        "--endpoint",
        metavar="HOST:PORT",
        help="server address, overriding the profile's (with no profile at all: plain text, for development)",
    )
    group.add_argument("--output", "-o", choices=OUTPUT_FORMATS, default="text", help="output format (default text)")
    return common


def add_command(commands, name: str, help: str, example: str | Sequence[str], **kwargs: Any) -> argparse.ArgumentParser:
    """A (sub)command whose --help says what it does (`help`, a sentence without its full stop)
    and ends with an example (a string, lines of one session) or several (a sequence)."""
    examples = [example] if isinstance(example, str) else list(example)
    label = "Example:" if len(examples) == 1 else "Examples:"
    lines = "\n".join(f"  {line.strip()}" for e in examples for line in e.splitlines())
    return commands.add_parser(
        name,
        help=help,
        description=textwrap.fill(f"{help[0].upper()}{help[1:]}.", 79),
        epilog=f"{label}\n{lines}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **kwargs,
    )


def add_group(commands, name: str, help: str, example: str | Sequence[str]):
    """A command group (`keyrelay NAME SUBCOMMAND`); returns the action to add subcommands to."""
    parser = add_command(commands, name, help, example)
    return parser.add_subparsers(dest=f"{name.replace('-', '_')}_command", metavar="SUBCOMMAND", required=True)


class KeyValueAction(argparse.Action):
    """A repeatable `--flag KEY=VALUE` option collected into a dict; `KEY=VALUE` syntax errors and
    a key given twice are usage errors naming the flag."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        key, sep, value = values.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentError(self, f"expected KEY=VALUE, got {values!r}")
        pairs = dict(getattr(namespace, self.dest, None) or {})
        if key in pairs:
            raise argparse.ArgumentError(self, f"key {key!r} is given twice")
        pairs[key] = value
        setattr(namespace, self.dest, pairs)


def int_in_range(low: int, high: int) -> Callable[[str], int]:
    """An argparse `type` taking a whole number from `low` to `high`."""

    def parse(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            number = low - 1
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from {low} to {high}")
        return number

    return parse


def add_context_option(parser: argparse.ArgumentParser) -> None:
    """`--context KEY=VALUE`, repeatable, into `args.context` (a dict, empty by default)."""
    parser.add_argument(
        "--context", action=KeyValueAction, default={}, metavar="KEY=VALUE",
        help="encryption context entry; repeatable; decrypting needs exactly the same entries",
    )


# -- connecting and running --------------------------------------------------------------------


def connect(client_class: type, args: argparse.Namespace):
    """A client of `client_class` as `--profile` and `--endpoint` say. With `--endpoint` and no
    profile anywhere, a plain-text client of that endpoint (a development node)."""
    if args.profile or not args.endpoint or default_profile_path().exists():
        return client_class(args.endpoint, profile=load_profile(args.profile))
    return client_class(args.endpoint)


def error_line(exc: BaseException) -> str:
    """The one line (no `keyrelay:` prefix) that reports an expected error."""
    if isinstance(exc, KeyrelayError):
        line = exc.message if exc.reason == "UNSPECIFIED" else f"{exc.reason}: {exc.message}"
        if exc.request_id:
            line += f" [request id {exc.request_id}]"
    elif isinstance(exc, OSError) and exc.strerror:
        line = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    else:
        line = str(exc) or type(exc).__name__
    return " ".join(line.split())


def fail(message: str) -> int:
    """Print `keyrelay: MESSAGE` as one line to stderr; return the failure exit status (1)."""
    print(f"keyrelay: {' '.join(message.split())}", file=sys.stderr)
    return EXIT_FAILURE


def note(message: str) -> None:
    """Print a remark for the person at the terminal (not part of the output) to stderr."""
    print(message, file=sys.stderr)


def warn(message: str) -> None:
    """Print `keyrelay: warning: MESSAGE` to stderr (made `terminal_safe`)."""
    print(f"keyrelay: warning: {terminal_safe(message)}", file=sys.stderr)


def terminal_safe(text: str) -> str:
    """`text` as it may reach a terminal when someone else wrote it: every character Python does
    not call printable (control characters such as escape, carriage return, newline and the C1
    controls; format characters, which include the bidirectional overrides; separators other than
    the space) shown as its escape, e.g. ``\\x1b``, ``\\n``, ``\\u202e``. So a message can neither
    drive the terminal nor pass for another line of output. Tabs are left as they are."""
    if text.isprintable():
        return text
    return "".join(char if char == "\t" or char.isprintable() else repr(char)[1:-1] for char in text)


def guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Wrap a command `(args) -> exit status` so that an expected error is one line on stderr and
    exit status 1, Ctrl-C is exit status 130 without a traceback, and a closed pipe is quiet."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (KeyrelayError, ProfileError, ConfigError, CliError, OSError) as exc:
            if isinstance(exc, BrokenPipeError):
                _silence_stdout()
                return EXIT_FAILURE
            return fail(error_line(exc))
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED

    return run


def _silence_stdout() -> None:
    # The reader went away (`keyrelay key list | head -1`): point stdout at /dev/null so that the
    # interpreter's final flush does not complain about the pipe again.
    try:
        stdout = sys.stdout.fileno()
    except (OSError, ValueError, AttributeError):  # not a real file: nothing will complain
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, stdout)
    os.close(devnull)


def client_command(
    client_class: type,
    action: Callable[[Any, argparse.Namespace], Any],
    text: Callable[[Any], str] = str,
) -> Callable[[argparse.Namespace], int]:
    """A guarded command that connects a `client_class` client, runs `action(client, args)` and
    prints its result: `format_json(result)` with `--output json`, else `text(result)`. An action
    that writes its own output returns None."""

    @guarded
    def run(args: argparse.Namespace) -> int:
        with connect(client_class, args) as client:
            result = action(client, args)
        if result is not None:
            print(format_json(result) if args.output == "json" else text(result))
        return 0

    return run


# -- input and output --------------------------------------------------------------------------


def read_input(path: str | None, *, limit: int, what: str = "input") -> bytes:
    """All of FILE (or of stdin for None or '-'), as bytes; CliError when it is over `limit` bytes."""
    if path in (None, "-"):
        if _is_terminal(sys.stdin):
            note(f"(reading the {what} from the terminal; end it with Ctrl-D)")
        data = sys.stdin.buffer.read(limit + 1)
        source = "standard input"
    else:
        with open(path, "rb") as file:
            data = file.read(limit + 1)
        source = path
    if len(data) > limit:
        raise CliError(f"the {what} in {source} is over {limit} bytes, more than this command takes")
    return data


def write_output(data: bytes | str, path: str | None) -> None:
    """Write `data` (str as UTF-8) to FILE, created readable by its owner only, or to stdout for
    None or '-'."""
    if isinstance(data, str):
        data = data.encode()
    if path in (None, "-"):
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)


def stdout_is_terminal(path: str | None = None) -> bool:
    """Whether output bound for `path` (None or '-': stdout) lands on a terminal."""
    return path in (None, "-") and _is_terminal(sys.stdout)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # None, or closed
        return False


def b64(data: bytes) -> str:
    """Bytes as standard base64 text, the way every command prints them."""
    return base64.b64encode(data).decode("ascii")


# -- formatting --------------------------------------------------------------------------------


def public_fields(record: Any) -> list[dataclasses.Field]:
    """A dataclass's fields that may be shown: those hidden from repr (private keys, plaintext)
    are hidden from every output too."""
    return [f for f in dataclasses.fields(record) if f.repr]


def to_plain(value: Any, derived: Derived | None = None) -> Any:
    """A result as JSON-ready data: dataclasses as objects of their public fields (plus `derived`
    fields per type), bytes as base64, datetimes as ISO 8601 UTC, paths as strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        plain = {f.name: to_plain(getattr(value, f.name), derived) for f in public_fields(value)}
        for kind, extra in (derived or {}).items():
            if isinstance(value, kind):
                plain.update(extra(value))
        return plain
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat()
    if isinstance(value, (bytes, bytearray)):
        return b64(bytes(value))
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): to_plain(v, derived) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v, derived) for v in value]
    return value


def format_json(value: Any, derived: Derived | None = None) -> str:
    """A result as an indented JSON document with sorted keys (see `to_plain`)."""
    return json.dumps(to_plain(value, derived), indent=2, sort_keys=True)


def text_value(value: Any, empty: str = "-") -> str:
    """One value for text output: datetimes in UTC to the second, yes/no, lists comma-separated,
    mappings as k=v, and `empty` for an empty list, mapping, string or None."""
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping):
        value = [f"{k}={v}" for k, v in sorted(value.items())]
    if isinstance(value, (tuple, list)):
        return ", ".join(map(str, value)) if value else empty
    if isinstance(value, (bytes, bytearray)):
        return b64(bytes(value))
    if value is None or value == "":
        return empty
    return str(value)


def format_fields(items: Iterable[tuple[str, str]]) -> str:
    """`label  value` lines, the values aligned."""
    items = list(items)
    width = max((len(label) for label, _ in items), default=0)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in items)


def record_items(record: Any, empty: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """A dataclass's public fields as (label, text) pairs; `empty` says per field what an empty
    value means (default '-')."""
    empty = empty or {}
    return [
        (f.name.replace("_", " "), text_value(getattr(record, f.name), empty.get(f.name, "-")))
        for f in public_fields(record)
    ]


def format_table(records: Sequence[Any], columns: Sequence[Column], empty: Mapping[str, str] | None = None) -> str:
    """Records as an aligned table with a header line ('(none)' when there are none)."""
    if not records:
        return "(none)"
    empty = empty or {}

    def cell(record: Any, column: str | Callable[[Any], Any]) -> str:
        if callable(column):
            return text_value(column(record))
        return text_value(getattr(record, column), empty.get(column, "-"))

    rows = [[header for header, _ in columns]] + [[cell(r, column) for _, column in columns] for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)
