"""Config loading shared by every daemon: TOML, then `KEYRELAY_*` environment, then flags.

A daemon describes its config as frozen dataclasses (sections are nested dataclasses). `load`
reads the TOML file, applies environment variables named ``{prefix}_{SECTION}_{KEY}`` (upper
case) and then ``--set section.key=value`` overrides, converts every value to the field's type and
reports each mistake with the key and what to do about it.

Secrets never live in the config: a config names the environment variable or file that holds
them, and `read_secret` fetches them into a `Secret`, whose repr is redacted.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config cannot be loaded or is invalid; the message says which key and how to fix it."""


class Secret:
    """A secret string whose repr and str never show its value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret value; call only where it is handed to the HSM or a cipher."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


def read_secret(what: str, env_name: str, file_path: str, environ: Mapping[str, str]) -> Secret:
    """Read a secret from the named environment variable, or else from the named file.

    Raises ConfigError naming both places when neither holds the secret.
    """
    if env_name and environ.get(env_name):
        return Secret(environ[env_name])
    if file_path:
        try:
            value = Path(file_path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the {what} from {file_path}: {exc.strerror}") from None
        if not value:
            raise ConfigError(f"the {what} file {file_path} is empty")
        return Secret(value)
    where = f"environment variable {env_name}" if env_name else "no environment variable"
    raise ConfigError(
        f"the {what} is not set: export {env_name or 'the variable named in the config'} "
        f"or name a file holding it (checked {where}"
        f"{', file ' + file_path if file_path else ''})"
    )


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Convert a TOML or string value to the annotated type, or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or value == "":
            return None
        return _convert(value, args[0], key)
    if origin in (dict, collections.abc.Mapping) or tp is dict:
        (_key_tp, value_tp) = typing.get_args(tp) or (str, str)
        if isinstance(value, str):  # from the environment or --set: a TOML inline table
            try:
                value = tomllib.loads(f"v = {value}")["v"]
            except tomllib.TOMLDecodeError:
                raise ConfigError(f'{key} must be a TOML inline table such as {{ name = "value" }} (got {value!r})') from None
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a table of name = value (got {value!r})")
        return {str(k): _convert(v, value_tp, f"{key}.{k}") for k, v in value.items()}
    if origin in (tuple, list):
        (item_tp, *_rest) = typing.get_args(tp) or (str,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list (got {value!r})")
        return tuple(_convert(v, item_tp, key) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key} must be true or false (got {value!r})")
    if tp in (int, float):
        if isinstance(value, bool) or (tp is int and isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{key} must be {'an integer' if tp is int else 'a number'} (got {value!r})")
        try:
            return tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be {'an integer' if tp is int else 'a number'} (got {value!r})") from None
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key} must be a string (got {value!r})")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def config_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key a config dataclass accepts (sections expanded)."""
    keys: list[str] = []
    hints = typing.get_type_hints(cls)
    for name in _fields(cls):
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            keys.extend(config_keys(tp, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _build(cls: type[T], data: Mapping[str, Any], path: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = _fields(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        names = ", ".join(f"{path}{k}" for k in unknown)
        raise ConfigError(f"unknown config key(s): {names}; known keys: {', '.join(config_keys(cls, path))}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{path}{name} must be a section (a TOML table)")
            kwargs[name] = _build(tp, value, f"{path}{name}.")
        else:
            kwargs[name] = _convert(value, tp, f"{path}{name}")
    return cls(**kwargs)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def load(
    cls: type[T],
    path: str | os.PathLike[str] | None,
    *,
    env_prefix: str,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> T:
    """Load a config dataclass from TOML, environment and overrides, in that order of precedence.

    Args:
        cls: the frozen dataclass describing the config.
        path: the TOML file, or None for defaults only.
        env_prefix: e.g. ``KEYRELAY_NODE``; ``KEYRELAY_NODE_HSM_MODULE`` sets ``hsm.module``.
        environ: the environment (defaults to os.environ).
        overrides: dotted keys to string values, from ``--set`` flags.

    Raises:
        ConfigError: with the file, key and a hint when anything is wrong.
    """
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    for key in config_keys(cls):
        env_name = f"{env_prefix}_{key.replace('.', '_').upper()}"
        if env_name in environ:
            _set_dotted(data, key, environ[env_name])
    known = set(config_keys(cls))
    for key, value in (overrides or {}).items():
        if key not in known:
            raise ConfigError(f"--set {key}: unknown config key; known keys: {', '.join(sorted(known))}")
        _set_dotted(data, key, value)
    try:
        return _build(cls, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path else str(exc)) from None


def parse_overrides(pairs: list[str] | None) -> dict[str, str]:
    """Turn ``["a.b=1", ...]`` from repeated ``--set`` flags into a dict."""
    result: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: write it as section.key=value")
        result[key.strip()] = value
    return result


def resolve_path(base: str | os.PathLike[str] | None, value: str) -> str:
    """Resolve a path from a config relative to the config file's folder."""
    if not value or os.path.isabs(value) or base is None:
        return value
    return str(Path(base).resolve().parent / value)


def resolve_paths(base: str | os.PathLike[str] | None, section: T, *names: str) -> T:
    """A copy of a config section with the named path fields resolved against the config file."""
    return dataclasses.replace(section, **{n: resolve_path(base, getattr(section, n)) for n in names})


def check_host_port(key: str, value: str) -> None:
    """Raise ConfigError unless `value` is host:port with a port in 0-65535."""
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key} must be host:port (got {value!r})")


def is_loopback(listen: str) -> bool:
    """True when a host:port listens only on this machine (127.0.0.0/8, ::1 or localhost)."""
    import ipaddress

    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True, repr=False)
class StoreSettings:
    """Where a daemon keeps its store: the SQLite file at `path`, or the PostgreSQL database a
    `postgresql://USER@HOST:PORT/DATABASE` DSN names, which several replicas may share. The
    password is best left out of the DSN (libpq reads `PGPASSWORD`, `PGPASSFILE`, `~/.pgpass`);
    one written there is masked in `repr` and in every message. Each daemon subclasses this to give
    its own default `path` (declare the subclass with `repr=False` to keep the masking)."""

    path: str = "keyrelay.db"
    dsn: str = ""

    @property
    def location(self) -> str:
        """What the store opens: the DSN if set, else the SQLite file."""
        return self.dsn or self.path

    @property
    def shown(self) -> str:
        """The store for messages and logs (a DSN without its password)."""
        from foundation.postgres_db import redacted_dsn

        return f"PostgreSQL at {redacted_dsn(self.dsn)}" if self.dsn else f"SQLite file {self.path}"

    def check(self) -> None:
        """Raise ConfigError naming `store.dsn` or `store.path` if neither gives a usable store."""
        from foundation.postgres_db import is_postgres_dsn, redacted_dsn

        if self.dsn and not is_postgres_dsn(self.dsn):
            raise ConfigError(
                f"store.dsn {redacted_dsn(self.dsn)!r} is not a PostgreSQL URI: give "
                "postgresql://USER@HOST:PORT/DATABASE, or leave it empty for the SQLite file at store.path"
            )
        if not self.dsn and not self.path:
            raise ConfigError("store.path is empty: name the SQLite file of the store, or set store.dsn")

    def __repr__(self) -> str:
        from foundation.postgres_db import redacted_dsn

        return f"{type(self).__name__}(path={self.path!r}, dsn={redacted_dsn(self.dsn)!r})"
