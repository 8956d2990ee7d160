"""README's config tables match the code: the keys each daemon and the client profile read, and
their defaults.

Each table follows a marker line `<!-- config-table: NAME -->` (NAME: node, gateway, relay,
profile, and messenger: the fields of `MessengerPolicy`) and has a `key` and a `default` column.
The rules:

- The key cell holds one or more keys in backticks, separated by ` / ` or `, `
  ("`hsm.pin_env` / `hsm.pin_file`"). Keys are dotted as `foundation.config.config_keys` names
  them: `section.key` is `key` in the TOML table `[section]`; a table-valued key (the gateway's
  `listeners`, the profile's `private_endpoints`) is one key.
- The default cell holds one default for every key of the row, or one per key separated by `/`
  outside backticks ("`KEYRELAY_HSM_PIN` / " is a value and an empty default). Each default is:
  - empty: the default is empty ("", an empty list or table, or None);
  - `(required)`: the default is empty and the daemon refuses to start without a value (checked:
    a config with every documented required key set validates, and leaving out any one of them
    does not; for the profile, `load_profile` refuses a file without it);
  - a value in backticks: a string as it is, without quotes; anything else as a TOML value
    (`10`, `["127.0.0.1:7101"]`, `{ public = "127.0.0.1:7443" }`), equal to the default once
    tuples are read as lists and ints as floats.
- Every key the code reads is documented once, and every documented key exists in the code.

`readme_problems()` lists what is wrong with a README text; the second test shows it catches
mistakes by breaking a copy of README in several ways.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import tomllib
from pathlib import Path
from typing import Any, Callable

import pytest

from client_sdk import credentials as profile_module
from client_sdk.messenger_policy import MessengerPolicy
from foundation.config import ConfigError, config_keys
from kms_gateway.config import GatewayConfig
from kms_node.config import HsmConfig, NodeConfig
from relay.config import RelayConfig

README = Path(__file__).resolve().parents[2] / "README.md"
REQUIRED = "(required)"
TABLES = ("node", "gateway", "relay", "profile", "messenger")
_KEY = re.compile(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*")


class TableError(ValueError):
    """A config table cannot be read; the message says where and why."""


@dataclasses.dataclass(frozen=True)
class Row:
    keys: tuple[str, ...]
    defaults: tuple[str | None, ...]  # per key: None = empty, REQUIRED, or the text inside backticks
    line: int


# -- reading the README ---------------------------------------------------------------------------


def _split_outside_backticks(text: str, separator: str) -> list[str]:
    """Split `text` on `separator` (one character) where it is not inside a code span; `\\|` is a
    literal pipe, as in GitHub's tables."""
    parts, current, in_code, i = [], [], False, 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text) and text[i + 1] == "|":
            current.append("|")
            i += 2
            continue
        if char == "`":
            in_code = not in_code
        if char == separator and not in_code:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    parts.append("".join(current))
    return parts


def _cells(line: str) -> list[str]:
    stripped = line.strip()
    if not (stripped.startswith("|") and stripped.endswith("|")):
        raise TableError(f"not a table row: {line!r}")
    return [cell.strip() for cell in _split_outside_backticks(stripped[1:-1], "|")]


def _parse_keys(cell: str, line: int) -> tuple[str, ...]:
    keys = re.findall(r"`([^`]*)`", cell)
    rest = re.sub(r"`[^`]*`", "", cell).replace("/", "").replace(",", "").strip()
    if not keys or rest:
        raise TableError(f"line {line}: the key cell {cell!r} must hold only keys in backticks, separated by / or ,")
    for key in keys:
        if not _KEY.fullmatch(key):
            raise TableError(f"line {line}: {key!r} is not a dotted config key")
    return tuple(keys)


def _parse_default(part: str, line: int) -> str | None:
    part = part.strip()
    if not part:
        return None
    if part == REQUIRED:
        return REQUIRED
    match = re.fullmatch(r"`([^`]*)`", part)
    if not match:
        raise TableError(
            f"line {line}: default {part!r} must be empty, {REQUIRED} or one value in backticks"
        )
    return match.group(1)


def parse_table(text: str, name: str) -> list[Row]:
    """The rows of the table after `<!-- config-table: NAME -->`."""
    marker = f"<!-- config-table: {name} -->"
    lines = text.splitlines()
    found = [i for i, line in enumerate(lines) if line.strip() == marker]
    if len(found) != 1:
        raise TableError(f"README must hold the marker {marker} exactly once (found {len(found)})")
    i = found[0] + 1
    while i < len(lines) and not lines[i].strip():
        i += 1
    if i + 1 >= len(lines):
        raise TableError(f"no table after {marker}")
    header = [cell.lower() for cell in _cells(lines[i])]
    if "key" not in header or "default" not in header:
        raise TableError(f"line {i + 1}: the table after {marker} needs `key` and `default` columns, has {header}")
    if not re.fullmatch(r"\|( *:?-+:? *\|)+", lines[i + 1].strip()):
        raise TableError(f"line {i + 2}: expected the table's separator row")
    key_col, default_col = header.index("key"), header.index("default")
    rows = []
    for number in range(i + 2, len(lines)):
        line = lines[number]
        if not line.strip().startswith("|"):
            break
        cells = _cells(line)
        if len(cells) != len(header):
            raise TableError(f"line {number + 1}: {len(cells)} cells, the header has {len(header)}")
        keys = _parse_keys(cells[key_col], number + 1)
        parts = _split_outside_backticks(cells[default_col], "/")
        if len(parts) == 1:
            parts = parts * len(keys)
        if len(parts) != len(keys):
            raise TableError(
                f"line {number + 1}: {len(keys)} keys but {len(parts)} defaults; give one for all or one per key"
            )
        rows.append(Row(keys, tuple(_parse_default(p, number + 1) for p in parts), number + 1))
    if not rows:
        raise TableError(f"the table after {marker} has no rows")
    return rows


# -- what the code says ---------------------------------------------------------------------------


def _is_empty(value: Any) -> bool:
    return value is None or value == "" or value == () or value == [] or value == {}


def _plain(value: Any) -> Any:
    """Tuples as lists, ints as floats, recursively: how a TOML value compares with a default."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _get(config: Any, key: str) -> Any:
    for part in key.split("."):
        config = getattr(config, part)
    return config


def _with(config: Any, key: str, value: Any) -> Any:
    head, _, rest = key.partition(".")
    if not rest:
        return dataclasses.replace(config, **{head: value})
    return dataclasses.replace(config, **{head: _with(getattr(config, head), rest, value)})


def _filler(default: Any) -> Any:
    """A non-empty value of the default's type, to stand for a required setting."""
    if isinstance(default, tuple):
        return ("filler",)
    if isinstance(default, dict):
        return {"filler": "filler"}
    return "filler"


@dataclasses.dataclass(frozen=True)
class Daemon:
    """A daemon's config class and a valid base config of it (defaults, but for what this machine
    needs: a node's `hsm.module` must be an existing file)."""

    cls: type
    base: Callable[[], Any]


DAEMONS = {
    "node": Daemon(NodeConfig, lambda: NodeConfig(hsm=HsmConfig(module=sys.executable))),
    "gateway": Daemon(GatewayConfig, GatewayConfig),
    "relay": Daemon(RelayConfig, RelayConfig),
    "messenger": Daemon(MessengerPolicy, MessengerPolicy),
}


def _profile_keys() -> list[str]:
    relay = "relay"
    keys = [k for k in profile_module._KNOWN_KEYS if k != relay]
    return keys + [f"{relay}.{k}" for k in profile_module._RELAY_KEYS]


# The `Profile` attribute each profile key ends up in (a profile naming only `endpoint` shows the
# defaults of the others).
_PROFILE_FIELDS = {
    "endpoint": "endpoint",
    "ca": "credentials",
    "cert": "credentials",
    "key": "credentials",
    "tenant": "tenant",
    "timeout": "timeout",
    "private_endpoints": "private_endpoints",
    "relay.endpoint": "relay_endpoint",
    "relay.ca": "relay_credentials",
}


def _compare(documented: str, default: Any) -> bool:
    if isinstance(default, str):
        return documented == default
    try:
        value = tomllib.loads(f"v = {documented}")["v"]
    except tomllib.TOMLDecodeError:
        return False
    if isinstance(value, bool) != isinstance(default, bool):
        return False
    return _plain(value) == _plain(default)


def _check_keys(name: str, rows: list[Row], code_keys: list[str]) -> list[str]:
    problems = []
    documented = [key for row in rows for key in row.keys]
    for key in sorted({k for k in documented if documented.count(k) > 1}):
        problems.append(f"{name}: {key} is documented more than once")
    for key in sorted(set(code_keys) - set(documented)):
        problems.append(f"{name}: the code reads {key}, which the table does not document")
    for key in sorted(set(documented) - set(code_keys)):
        problems.append(f"{name}: the table documents {key}, which the code does not read")
    return problems


def _check_defaults(name: str, rows: list[Row], default_of: Callable[[str], Any], known: set[str]) -> list[str]:
    problems = []
    for row in rows:
        for key, documented in zip(row.keys, row.defaults):
            if key not in known:
                continue
            default = default_of(key)
            if documented is None or documented == REQUIRED:
                if not _is_empty(default):
                    shown = "empty" if documented is None else REQUIRED
                    problems.append(f"{name}: {key} (line {row.line}) is documented {shown}, but defaults to {default!r}")
            elif not _compare(documented, default):
                problems.append(
                    f"{name}: {key} (line {row.line}) is documented with default `{documented}`, but defaults to {default!r}"
                )
    return problems


def _check_required(name: str, rows: list[Row], daemon: Daemon) -> list[str]:
    required = [key for row in rows for key, d in zip(row.keys, row.defaults) if d == REQUIRED]
    known = set(config_keys(daemon.cls))
    required = [key for key in required if key in known]
    config = daemon.base()
    for key in required:
        config = _with(config, key, _filler(_get(config, key)))
    try:
        config.validate()
    except ConfigError as exc:
        return [f"{name}: a config with every (required) key set does not validate ({exc}): mark what it needs (required)"]
    problems = []
    for key in required:
        try:
            _with(config, key, _get(daemon.base(), key)).validate()
        except ConfigError:
            continue
        problems.append(f"{name}: {key} is documented {REQUIRED}, but the config validates without it")
    return problems


def _check_profile(rows: list[Row], tmp_dir: Path) -> list[str]:
    keys = _profile_keys()
    problems = _check_keys("profile", rows, keys)
    minimal = tmp_dir / "minimal-profile.toml"
    minimal.write_text('endpoint = "127.0.0.1:1"\n')
    loaded = profile_module.load_profile(minimal)
    required = {key for row in rows for key, d in zip(row.keys, row.defaults) if d == REQUIRED}

    def default_of(key: str) -> Any:
        return None if key in required else getattr(loaded, _PROFILE_FIELDS[key])

    problems += _check_defaults("profile", rows, default_of, set(keys) & set(_PROFILE_FIELDS))
    for key in sorted(set(keys) - set(_PROFILE_FIELDS)):
        problems.append(f"profile: the test does not know where {key} is loaded: add it to _PROFILE_FIELDS")
    for key in sorted(required & set(keys)):
        if "." in key:
            problems.append(f"profile: {key} is documented {REQUIRED}; only top-level keys can be")
            continue
        empty = tmp_dir / "without.toml"
        empty.write_text("" if key == "endpoint" else 'endpoint = "127.0.0.1:1"\n')
        try:
            profile_module.load_profile(empty)
        except profile_module.ProfileError:
            continue
        problems.append(f"profile: {key} is documented {REQUIRED}, but a profile without it loads")
    if "endpoint" not in required:
        problems.append(f"profile: endpoint must be documented {REQUIRED} (a profile without it is refused)")
    return problems


def readme_problems(text: str, tmp_dir: Path) -> list[str]:
    """Everything README's config tables get wrong about the code (empty when they are right)."""
    problems = []
    for name in TABLES:
        try:
            rows = parse_table(text, name)
        except TableError as exc:
            problems.append(f"{name}: {exc}")
            continue
        if name == "profile":
            problems += _check_profile(rows, tmp_dir)
            continue
        daemon = DAEMONS[name]
        keys = config_keys(daemon.cls)
        problems += _check_keys(name, rows, keys)
        defaults = daemon.cls()
        problems += _check_defaults(name, rows, lambda key: _get(defaults, key), set(keys))
        problems += _check_required(name, rows, daemon)
    return problems


# -- tests ------------------------------------------------------------------------------------------


def test_readme_config_tables_match_the_code(tmp_path):
    assert readme_problems(README.read_text(), tmp_path) == []


def _replace_row(key_cell: str, new_row: str | None) -> Callable[[str], str]:
    """A mutation replacing (or removing, with None) the table row whose key cell is `key_cell`."""

    def mutate(text: str) -> str:
        lines = text.splitlines(keepends=True)
        hits = [i for i, line in enumerate(lines) if line.startswith(f"| {key_cell} |")]
        assert len(hits) == 1, f"README has {len(hits)} rows for {key_cell}"
        lines[hits[0]] = "" if new_row is None else new_row + "\n"
        return "".join(lines)

    return mutate


def _change_default(key_cell: str, old: str, new: str) -> Callable[[str], str]:
    """A mutation changing the default cell `old` ('' for an empty one) of the row `key_cell`."""

    def cell(value: str) -> str:
        return f" {value} " if value else " "

    def mutate(text: str) -> str:
        prefix = f"| {key_cell} |{cell(old)}|"
        assert text.count(prefix) == 1, f"README has no single row {prefix}"
        return text.replace(prefix, f"| {key_cell} |{cell(new)}|")

    return mutate


def _insert_after_row(key_cell: str, new_row: str) -> Callable[[str], str]:
    def mutate(text: str) -> str:
        lines = text.splitlines(keepends=True)
        hits = [i for i, line in enumerate(lines) if line.startswith(f"| {key_cell} |")]
        assert len(hits) == 1, f"README has {len(hits)} rows for {key_cell}"
        lines.insert(hits[0] + 1, new_row + "\n")
        return "".join(lines)

    return mutate


MISTAKES = {
    "a node key removed": (
        _replace_row("`hsm.slot_retry_seconds`", None),
        "node: the code reads hsm.slot_retry_seconds, which the table does not document",
    ),
    "a key that does not exist": (
        _insert_after_row("`hsm.threads`", "| `hsm.pin` | | the PIN itself |"),
        "node: the table documents hsm.pin, which the code does not read",
    ),
    "a key documented twice": (
        _insert_after_row("`store_threads`", "| `store_threads` | `4` | again |"),
        "relay: store_threads is documented more than once",
    ),
    "a gateway default changed": (
        _change_default("`rate_limit.burst`", "`2000`", "`2001`"),
        "gateway: rate_limit.burst (line",
    ),
    "the second of two defaults changed": (
        _change_default("`hsm.so_pin_env` / `hsm.so_pin_file`", "`KEYRELAY_HSM_SO_PIN` /", "`KEYRELAY_HSM_SO_PIN` / `so.pin`"),
        "node: hsm.so_pin_file (line",
    ),
    "an empty default documented with a value": (
        _change_default("`tls.client_ca`", "", "`/etc/keyrelay/pki/internal/ca.crt`"),
        "node: tls.client_ca (line",
    ),
    "a value documented empty": (
        _change_default("`private_endpoint.zone`", "`private`", ""),
        "node: private_endpoint.zone (line",
    ),
    "a required key not marked": (
        _change_default("`internal.ca`", REQUIRED, ""),
        "gateway: a config with every (required) key set does not validate",
    ),
    "an optional key marked required": (
        _change_default("`hsm.pin_env` / `hsm.pin_file`", "`KEYRELAY_HSM_PIN` /", f"`KEYRELAY_HSM_PIN` / {REQUIRED}"),
        "node: hsm.pin_file is documented (required), but the config validates without it",
    ),
    "an optional profile key marked required": (
        _change_default("`tenant`", "", REQUIRED),
        "profile: tenant is documented (required), but a profile without it loads",
    ),
    "a relay number changed": (
        _change_default("`mailbox.max_bytes`", "`268435456`", "`268435455`"),
        "relay: mailbox.max_bytes (line",
    ),
    "a profile default changed": (
        _change_default("`timeout`", "`10`", "`30`"),
        "profile: timeout (line",
    ),
    "a profile key removed": (
        _replace_row("`relay.ca`", None),
        "profile: the code reads relay.ca, which the table does not document",
    ),
    "a marker removed": (
        lambda text: text.replace("<!-- config-table: relay -->", "<!-- relay -->"),
        "relay: README must hold the marker <!-- config-table: relay --> exactly once (found 0)",
    ),
    "a default cell that is not a value": (
        _change_default("`hsm.sessions_per_slot`", "`4`", "four"),
        "default 'four' must be empty, (required) or one value in backticks",
    ),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_a_broken_copy_of_readme_fails(mistake, tmp_path):
    mutate, expected = MISTAKES[mistake]
    copy = tmp_path / "README.md"
    copy.write_text(mutate(README.read_text()))
    problems = readme_problems(copy.read_text(), tmp_path)
    assert any(expected in problem for problem in problems), problems
