"""TLS for keyrelay's gRPC servers and channels, and who is on the other end of a call.

- `server_credentials` builds (mutual) TLS server credentials from the files a config names.
- `channel_credentials` / `channel_credentials_from_pem` build a client's credentials: the CA to
  trust and, for mutual TLS, the client certificate and key.
- `peer_certificate`, `peer_common_name`, `peer_organization` and `peer_ip` tell a servicer who
  called: the verified client certificate and the address the call came from.

Host names: gRPC checks the server certificate's subjectAltName against the host the client dials.
A client must therefore dial a host the certificate names: a server issued with
``hosts=("localhost", "127.0.0.1")`` is reached as ``localhost:PORT`` or ``127.0.0.1:PORT`` (an
IP SAN matches the dialled IP address), but not as ``::1`` or the machine's own name.

Every file is read and parsed up front, so a bad path or a file of the wrong kind fails at start-up
with a `ConfigError` naming the file and its config key, not later in the TLS handshake. Private
key contents never appear in an error message.
"""

from __future__ import annotations

import functools

import ipaddress
import os
import urllib.parse
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

from foundation.config import ConfigError
from foundation.pki import load_private_key

__all__ = [
    "channel_credentials",
    "channel_credentials_from_pem",
    "peer_certificate",
    "peer_common_name",
    "peer_ip",
    "peer_organization",
    "server_credentials",
]

_PEER_CERT_KEY = "x509_pem_cert"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _read_pem(path: str | os.PathLike[str], what: str, config_key: str = "") -> bytes:
    where = f"{path} (config key {config_key})" if config_key else str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {where}: {exc.strerror}") from None
    if not data.strip():
        raise ConfigError(f"the {what} {where} is empty")
    return data


def _check_certificates(pem: bytes, what: str, where: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ConfigError(f"the {what} {where} holds no PEM certificate") from None


def _check_pair(cert_pem: bytes, key_pem: bytes, cert_where: str, key_where: str) -> None:
    """Raise ConfigError unless the PEMs are a certificate and the unencrypted key belonging to it."""
    (leaf, *_chain) = _check_certificates(cert_pem, "certificate", cert_where)
    load_private_key(key_pem, key_where, certificate=leaf, certificate_where=cert_where)


def server_credentials(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    client_ca_path: str | os.PathLike[str] = "",
    *,
    require_client_cert: bool = True,
    section: str = "tls",
) -> grpc.ServerCredentials:
    """TLS server credentials from PEM files.

    With `client_ca_path` the server asks clients for a certificate issued by that CA; with
    `require_client_cert` (the default) it refuses clients without one. `section` is the config
    section the paths came from, named in error messages (``tls.cert``, ``tls.key``...).

    Raises:
        ConfigError: a file is missing, unreadable or not what it should be.
    """
    if require_client_cert and not client_ca_path:
        raise ConfigError(f"{section}.client_ca is not set: mutual TLS needs the CA that issues client certificates")
    cert_pem = _read_pem(cert_path, "TLS certificate", f"{section}.cert")
    key_pem = _read_pem(key_path, "TLS private key", f"{section}.key")
    _check_pair(cert_pem, key_pem, f"{cert_path} ({section}.cert)", f"{key_path} ({section}.key)")
    client_ca_pem = None
    if client_ca_path:
        client_ca_pem = _read_pem(client_ca_path, "client CA certificate", f"{section}.client_ca")
        _check_certificates(client_ca_pem, "client CA certificate", f"{client_ca_path} ({section}.client_ca)")
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)],
        root_certificates=client_ca_pem,
        require_client_auth=bool(client_ca_pem) and require_client_cert,
    )


def channel_credentials(
    ca_path: str | os.PathLike[str],
    cert_path: str | os.PathLike[str] = "",
    key_path: str | os.PathLike[str] = "",
) -> grpc.ChannelCredentials:
    """A client's TLS credentials from PEM files: the CA to trust, and optionally its own
    certificate and key for mutual TLS.

    Raises:
        ConfigError: a file is missing or unreadable, or only one of cert and key is given.
    """
    ca_pem = _read_pem(ca_path, "CA certificate")
    cert_pem = _read_pem(cert_path, "client certificate") if cert_path else None
    key_pem = _read_pem(key_path, "client private key") if key_path else None
    return _channel_credentials(ca_pem, cert_pem, key_pem, str(ca_path), str(cert_path), str(key_path))


def channel_credentials_from_pem(
    ca_pem: bytes, cert_pem: bytes | None = None, key_pem: bytes | None = None
) -> grpc.ChannelCredentials:
    """A client's TLS credentials from PEM bytes (see `channel_credentials`)."""
    return _channel_credentials(ca_pem, cert_pem, key_pem, "(given)", "(given)", "(given)")


def _channel_credentials(
    ca_pem: bytes, cert_pem: bytes | None, key_pem: bytes | None, ca_where: str, cert_where: str, key_where: str
) -> grpc.ChannelCredentials:
    if bool(cert_pem) != bool(key_pem):
        raise ConfigError("a client certificate needs its private key and a key its certificate; give both or neither")
    _check_certificates(ca_pem, "CA certificate", ca_where)
    if cert_pem and key_pem:
        _check_pair(cert_pem, key_pem, cert_where, key_where)
    return grpc.ssl_channel_credentials(
        root_certificates=ca_pem, private_key=key_pem or None, certificate_chain=cert_pem or None
    )


def peer_certificate(context: grpc.aio.ServicerContext) -> x509.Certificate | None:
    """The certificate the client presented (verified by the TLS layer), or None without one."""
    values = (context.auth_context() or {}).get(_PEER_CERT_KEY)
    if not values:
        return None
    return _parse_peer_pem(values[0])


# Every call on a connection presents the same certificate: parse each one once, not per call.
@functools.lru_cache(maxsize=4096)
def _parse_peer_pem(pem: bytes) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None


def _attribute(cert: x509.Certificate | None, oid: x509.ObjectIdentifier) -> str:
    if cert is None:
        return ""
    for attribute in cert.subject.get_attributes_for_oid(oid):
        value = attribute.value
        return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return ""


def peer_common_name(cert: x509.Certificate | None) -> str:
    """The subject common name (CN) of a certificate, or "" when it has none."""
    return _attribute(cert, NameOID.COMMON_NAME)


def peer_organization(cert: x509.Certificate | None) -> str:
    """The subject organization (O) of a certificate, or "" when it has none."""
    return _attribute(cert, NameOID.ORGANIZATION_NAME)


def peer_ip(context: grpc.aio.ServicerContext) -> IPAddress | None:
    """The caller's IP address from `context.peer()`, or None for Unix sockets and unknown forms.

    Understands ``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5`` and its URL-encoded form
    ``ipv6:%5B::1%5D:5``. An IPv4-mapped IPv6 address is returned as the IPv4 address.
    """
    peer = urllib.parse.unquote(context.peer() or "")
    scheme, _, rest = peer.partition(":")
    if scheme == "ipv4":
        host = rest.rpartition(":")[0]
    elif scheme == "ipv6":
        host = rest.rpartition(":")[0] if rest.startswith("[") else rest
        host = host.removeprefix("[").removesuffix("]")
    else:
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
