"""Who may call what, from where, on which keys: the access-point rules (seed 001, claims 3 and 6).

Both the gateway and a dedicated node's private endpoint apply these rules to every request, so
they live here, free of gRPC: a `Principal` is what an authenticated client certificate stands
for, and the checks raise the keyrelay error the caller should see.

- Roles: each RPC belongs to one or more roles (`METHOD_ROLES`); an access point's role must be
  one of them.
- Networks: an access point may be limited to gateway listener zones and to client CIDRs.
- Keys: an access point names the keys it may use as key ids or aliases, with `*` matching any
  run of characters; a key matches if its id or any of its aliases matches a pattern.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from dataclasses import dataclass
from typing import Iterable

from foundation.errors import NetworkNotAllowedError, PermissionDeniedError

ADMIN, CRYPTO_USER, MESSAGING_USER = "admin", "crypto-user", "messaging-user"
ROLES = (ADMIN, CRYPTO_USER, MESSAGING_USER)

#: Key lifecycle RPCs of KeyManagementService: the "management requests" of claim 3.
MANAGEMENT_METHODS = frozenset(
    {
        "CreateKey", "DescribeKey", "ListKeys", "EnableKey", "DisableKey", "ScheduleKeyDeletion",
        "CancelKeyDeletion", "RotateKey", "UpdateKey", "CreateAlias", "DeleteAlias",
    }
)
#: Cryptographic RPCs: on a dedicated key they belong at the instance's private endpoint.
CRYPTO_METHODS = frozenset(
    {
        "Encrypt", "Decrypt", "ReEncrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext",
        "BatchDecrypt", "BatchGenerateDataKey", "GenerateRandom", "SealPublicKey", "OpenPublicKey",
    }
)
_READS = frozenset({"DescribeKey", "ListKeys"})
METHOD_ROLES: dict[str, frozenset[str]] = {
    **{m: frozenset({ADMIN}) for m in MANAGEMENT_METHODS - _READS},
    **{m: frozenset({ADMIN, CRYPTO_USER}) for m in ("ListKeys",)},
    "DescribeKey": frozenset({ADMIN, CRYPTO_USER, MESSAGING_USER}),
    **{m: frozenset({CRYPTO_USER}) for m in CRYPTO_METHODS - {"SealPublicKey", "OpenPublicKey"}},
    "SealPublicKey": frozenset({MESSAGING_USER}),
    "OpenPublicKey": frozenset({MESSAGING_USER}),
}
_ZONE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
#: A tenant id: 1-64 of a-z 0-9 . _ -, starting with a letter or digit.
TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
#: A dedicated instance id: 1-63 of a-z 0-9 and '-', not starting or ending with '-'.
INSTANCE_ID = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_ROLE_ENUM_PREFIX = "ACCESS_POINT_ROLE_"


def role_from_enum_name(name: str) -> str:
    """`ACCESS_POINT_ROLE_CRYPTO_USER` (the protobuf enum name) -> `crypto-user`; '' when unset or unknown."""
    role = name.removeprefix(_ROLE_ENUM_PREFIX).lower().replace("_", "-")
    return role if role in ROLES else ""


def role_enum_name(role: str) -> str:
    """`crypto-user` -> `ACCESS_POINT_ROLE_CRYPTO_USER`, the protobuf enum name of a role."""
    return _ROLE_ENUM_PREFIX + role.upper().replace("-", "_")


@dataclass(frozen=True, slots=True)
class Principal:
    """The access point a request's client certificate was issued to."""

    tenant_id: str
    access_point_id: str
    name: str
    role: str
    key_patterns: tuple[str, ...] = ()
    allowed_zones: tuple[str, ...] = ()
    allowed_cidrs: tuple[str, ...] = ()
    credential_serial: str = ""


def valid_zone(zone: str) -> bool:
    """Zone names are 1-32 of a-z, 0-9 and '-', starting with a letter or digit."""
    return bool(_ZONE.fullmatch(zone))


def check_role(principal: Principal, method: str, *, admin_service: bool = False) -> None:
    """Raise PermissionDeniedError unless the principal's role may call `method`."""
    allowed = frozenset({ADMIN}) if admin_service else METHOD_ROLES.get(method, frozenset())
    if principal.role not in allowed:
        need = " or ".join(sorted(allowed)) or "no role"
        raise PermissionDeniedError(
            f"access point {principal.name!r} has role {principal.role}; {method} needs {need}: "
            "use a credential of an access point with that role"
        )


def check_network(principal: Principal, zone: str, peer_ip: ipaddress._BaseAddress | None) -> None:
    """Raise NetworkNotAllowedError unless the request's zone and address are allowed."""
    if principal.allowed_zones and zone not in principal.allowed_zones:
        raise NetworkNotAllowedError(
            f"access point {principal.name!r} may be used only from zone(s) {', '.join(principal.allowed_zones)}; "
            f"this request came in on zone {zone!r}"
        )
    if principal.allowed_cidrs:
        if peer_ip is None or not any(
            peer_ip in ipaddress.ip_network(cidr, strict=False) for cidr in principal.allowed_cidrs
        ):
            raise NetworkNotAllowedError(
                f"access point {principal.name!r} may be used only from {', '.join(principal.allowed_cidrs)}; "
                f"this request came from {peer_ip or 'an unknown address'}"
            )


def key_matches(patterns: Iterable[str], key_id: str, aliases: Iterable[str] = ()) -> bool:
    """True when the key id or one of its aliases matches one of the patterns (`*` = any run)."""
    names = (key_id, *aliases)
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns for name in names)


def check_key(principal: Principal, key_id: str, aliases: Iterable[str] = (), *, shown_as: str = "") -> None:
    """Raise PermissionDeniedError unless the principal's key patterns cover the key."""
    if not key_matches(principal.key_patterns, key_id, aliases):
        raise PermissionDeniedError(
            f"access point {principal.name!r} may not use key {shown_as or key_id}: it is not covered by its "
            f"key patterns ({', '.join(principal.key_patterns) or 'none'})"
        )


def zone_for(listener_zone: str, peer_ip: ipaddress._BaseAddress | None, zone_cidrs: dict[str, tuple[str, ...]]) -> str:
    """The zone of a request: the most specific CIDR zone containing the client's address, else the
    zone of the listener it arrived on."""
    best: tuple[int, str] | None = None
    if peer_ip is not None:
        for zone, cidrs in zone_cidrs.items():
            for cidr in cidrs:
                network = ipaddress.ip_network(cidr, strict=False)
                if peer_ip.version == network.version and peer_ip in network:
                    if best is None or network.prefixlen > best[0]:
                        best = (network.prefixlen, zone)
    return best[1] if best else listener_zone
