"""Credentials and profiles: where the SDK and the `keyrelay` command connect, and as whom.

A *profile* is a small TOML file naming the gateway and the access-point credential (a client
certificate, its private key and the KMS CA) to use::

    endpoint = "127.0.0.1:7443"
    ca = "ca.crt"               # relative paths are read against the profile's folder
    cert = "admin.crt"
    key = "admin.key"
    timeout = 10
    [private_endpoints]
    dev-dedicated = "127.0.0.1:7202"
    [relay]                     # the messaging relay (optional)
    endpoint = "127.0.0.1:7301"
    ca = "relay-ca.crt"         # the CA of the relay's server certificate; without it, plain text

Without `ca`, `cert` and `key` the connection is plain text (a development node); `tenant` then
names the tenant to act as. The relay authenticates with device tokens, kept by the messaging
client in its own encrypted device file, never in a profile. `load_profile()` with no path reads `$KEYRELAY_PROFILE`, else
`.keyrelay/profile.toml` in the current directory (what `keyrelay dev up` writes).
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from foundation.config import ConfigError
from foundation.tls import channel_credentials

#: Environment variable naming the default profile file.
PROFILE_ENV = "KEYRELAY_PROFILE"
#: The default profile file, relative to the current directory.
DEFAULT_PROFILE_PATH = Path(".keyrelay") / "profile.toml"
DEFAULT_TIMEOUT = 10.0

_KNOWN_KEYS = ("endpoint", "ca", "cert", "key", "tenant", "timeout", "private_endpoints", "relay")
_RELAY_KEYS = ("endpoint", "ca")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class ProfileError(ValueError):
    """A profile or credential file is missing or wrong; the message names the file and the fix."""


@dataclass(frozen=True)
class CredentialBundle:
    """PEM bytes for a TLS connection: the CA that signs the server, and the client's certificate
    and private key (both or neither; without them the server sees no client credential).

    The private key never appears in `repr`.
    """

    ca_cert: bytes
    client_cert: bytes | None = None
    client_key: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.client_cert is None) != (self.client_key is None):
            raise ProfileError("a client certificate needs its private key, and a private key its certificate")

    @classmethod
    def from_files(
        cls, ca: str | os.PathLike, cert: str | os.PathLike | None = None, key: str | os.PathLike | None = None
    ) -> "CredentialBundle":
        """Read the CA certificate and, optionally, the client certificate and key from PEM files.

        Raises ProfileError naming the file that cannot be read or is not what it should be (no
        PEM certificate, an encrypted key, a key not of the certificate), or the one of cert/key
        that is missing.
        """
        if (cert is None) != (key is None):
            given, missing = ("cert", "key") if key is None else ("key", "cert")
            raise ProfileError(f"a client {given} file was given without its {missing} file")
        try:
            # Reads and checks every file (PEM, key matches certificate), naming the one at fault.
            channel_credentials(ca, cert or "", key or "")
        except ConfigError as exc:
            raise ProfileError(str(exc)) from None
        if cert is None:
            return cls(Path(ca).read_bytes())
        return cls(Path(ca).read_bytes(), Path(cert).read_bytes(), Path(key).read_bytes())


@dataclass(frozen=True)
class Profile:
    """Where to connect and with which credential.

    Attributes:
        endpoint: host:port of the gateway (or of a node in development).
        credentials: the TLS credential; None means a plain-text connection.
        tenant: tenant to act as, only for plain-text development nodes (the credential decides
            behind the gateway).
        timeout: default per-call deadline, seconds.
        private_endpoints: instance id -> host:port of its private endpoint.
        path: the file the profile was loaded from, if any.
        relay_endpoint: host:port of the messaging relay, if the profile names one.
        relay_credentials: the CA to trust for the relay's TLS; None means plain text.
    """

    endpoint: str
    credentials: CredentialBundle | None = None
    tenant: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    private_endpoints: dict[str, str] = field(default_factory=dict)
    path: Path | None = None
    relay_endpoint: str | None = None
    relay_credentials: CredentialBundle | None = None


def default_profile_path() -> Path:
    """`$KEYRELAY_PROFILE` if set, else `.keyrelay/profile.toml` in the current directory."""
    return Path(os.environ.get(PROFILE_ENV) or Path.cwd() / DEFAULT_PROFILE_PATH)


def load_profile(path: str | os.PathLike | None = None) -> Profile:
    """Load a profile file (default: `default_profile_path()`) and the credential files it names.

    Raises ProfileError for a missing or unreadable file, unknown keys, a wrong value, or a
    credential file that cannot be read.
    """
    path = Path(path) if path is not None else default_profile_path()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ProfileError(
            f"no profile at {path}: run `keyrelay dev up`, write one with `keyrelay credential issue --out DIR`, "
            f"or point {PROFILE_ENV} at one"
        ) from None
    except OSError as exc:
        raise ProfileError(f"cannot read the profile {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"the profile {path} is not valid TOML: {exc}") from None

    unknown = sorted(set(data) - set(_KNOWN_KEYS))
    if unknown:
        raise ProfileError(
            f"the profile {path} has unknown key(s) {', '.join(unknown)}; known keys: {', '.join(_KNOWN_KEYS)}"
        )
    endpoint = _string(data, "endpoint", path)
    if not endpoint:
        raise ProfileError(f'the profile {path} names no endpoint: add endpoint = "HOST:PORT"')
    folder = path.parent

    def resolve(key: str) -> Path | None:
        value = _string(data, key, path)
        return folder / value if value else None  # an absolute value stays as it is

    ca, cert, key = resolve("ca"), resolve("cert"), resolve("key")
    if ca is None and (cert is not None or key is not None):
        raise ProfileError(f"the profile {path} names a client cert/key but no ca: add ca = \"FILE\"")
    try:
        credentials = CredentialBundle.from_files(ca, cert, key) if ca is not None else None
    except ProfileError as exc:
        raise ProfileError(f"profile {path}: {exc}") from None

    timeout = data.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ProfileError(f"the profile {path} has timeout = {timeout!r}; give a positive number of seconds")
    private = data.get("private_endpoints", {})
    if not isinstance(private, dict) or not all(isinstance(v, str) for v in private.values()):
        raise ProfileError(
            f'the profile {path} has a bad [private_endpoints] table; write one INSTANCE_ID = "HOST:PORT" a line'
        )
    relay_endpoint, relay_credentials = _relay_section(data.get("relay", {}), path)
    return Profile(
        endpoint=endpoint,
        credentials=credentials,
        tenant=_string(data, "tenant", path) or None,
        timeout=float(timeout),
        private_endpoints=dict(private),
        path=path,
        relay_endpoint=relay_endpoint,
        relay_credentials=relay_credentials,
    )


def _relay_section(section: Any, path: Path) -> tuple[str | None, CredentialBundle | None]:
    if not isinstance(section, dict) or set(section) - set(_RELAY_KEYS):
        raise ProfileError(
            f'the profile {path} has a bad [relay] table; its keys are endpoint = "HOST:PORT" and ca = "FILE"'
        )
    endpoint = _string(section, "endpoint", path)
    ca = _string(section, "ca", path)
    if ca and not endpoint:
        raise ProfileError(f'the profile {path} names a relay ca but no relay endpoint: add endpoint = "HOST:PORT"')
    try:
        credentials = CredentialBundle.from_files(path.parent / ca) if ca else None
    except ProfileError as exc:
        raise ProfileError(f"profile {path} [relay]: {exc}") from None
    return endpoint or None, credentials


def _string(data: Mapping[str, Any], key: str, path: Path) -> str:
    value = data.get(key, "")
    if not isinstance(value, str):
        raise ProfileError(f'the profile {path} has {key} = {value!r}; write it as a string: {key} = "..."')
    return value


def write_profile(
    path: str | os.PathLike,
    endpoint: str,
    ca: str | os.PathLike | None,
    cert: str | os.PathLike | None,
    key: str | os.PathLike | None,
    private_endpoints: Mapping[str, str] | None = None,
    relay_endpoint: str | None = None,
    relay_ca: str | os.PathLike | None = None,
) -> Path:
    """Write a profile file readable by its owner only (0600) and return its path.

    Relative credential paths are taken from the current directory, like any path argument.
    Files inside the profile's folder are written relative to it, so the folder can be moved;
    others are written as absolute paths.
    """
    path = Path(path)
    folder = path.parent.resolve()
    lines = [f"endpoint = {_toml_string(endpoint)}"]
    for name, value in (("ca", ca), ("cert", cert), ("key", key)):
        if value is not None:
            lines.append(f"{name} = {_toml_string(_relative_to(Path(value), folder))}")
    lines.append(f"timeout = {DEFAULT_TIMEOUT:g}")
    if private_endpoints:
        lines.append("")
        lines.append("[private_endpoints]")
        for instance_id, target in private_endpoints.items():
            name = instance_id if _BARE_KEY.fullmatch(instance_id) else _toml_string(instance_id)
            lines.append(f"{name} = {_toml_string(target)}")
    if relay_endpoint:
        lines += ["", "[relay]", f"endpoint = {_toml_string(relay_endpoint)}"]
        if relay_ca is not None:
            lines.append(f"ca = {_toml_string(_relative_to(Path(relay_ca), folder))}")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write("\n".join(lines) + "\n")
    os.chmod(temporary, 0o600)  # in case it existed with a wider mode
    os.replace(temporary, path)
    return path


def _relative_to(value: Path, folder: Path) -> str:
    value = value.resolve()
    try:
        return str(value.relative_to(folder))
    except ValueError:
        return str(value)


def _toml_string(value: str) -> str:
    # A JSON string is a valid TOML basic string (same escapes, \uXXXX for control characters).
    return json.dumps(str(value), ensure_ascii=False)
