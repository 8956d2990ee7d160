"""Who may call what, from where, on which keys: the one authorization module of the KMS.

The gateway and every private endpoint ask it about every request, and the shared KMS asks it
about every access point and credential an AdminService call creates or changes. It is pure: no
gRPC, no I/O. Each check answers None (allowed) or a `Denial`: the rule that refused and the
keyrelay error to raise.

**Roles** (an access point holds a set of them; `admin` is shorthand for all four):

- `key-admin`: key lifecycle (`CreateKey`, enable, disable, deletion, rotation, `UpdateKey`,
  aliases), key reads, instance reads; with the operator property also `RegisterInstance`;
- `access-admin`: access points and credentials, instance reads;
- `crypto-user`: cryptography (`Encrypt`, `Decrypt`, ... `GenerateRandom`) and key reads;
- `messaging-user`: `SealPublicKey`, `OpenPublicKey`, `DescribeKey`.

`RULES` is the table (the README's role table is tested against it).

**Checks of a request**, in this order, after the entry point charged the caller's tenant its
rate limit; the first that fails decides:

1. `check_call`: the access point's zones and CIDRs; at a private endpoint, that the caller's
   tenant owns the instance and that the method is one a private endpoint serves; the role;
   the operator property for global methods;
2. `check_name` for an alias the request creates (`foundation.key_refs`), then, once the entry
   point resolved them, `check_key` (or `check_name` for an alias it removes) for every key the
   request names;
3. `check_route` at the gateway, for a key of a dedicated instance: the instance's management
   zones, and whether it allows cryptography through the gateway.

**AdminService targets** (`check_tenant`, `check_grant`): a caller acts on its own tenant only,
unless it has the *operator* property. It creates, deletes or issues or revokes credentials only
for access points it *covers*: every role of the target is one of its roles; every key pattern of
the target is covered by one of its patterns (whatever key the target's pattern matches, its
pattern matches too); the target's zones and CIDRs are within its own (no restriction covers
any); and only an operator creates an operator. So nothing an access point mints is more than it
has, and repeating the process never gets further.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from typing import Iterable, Protocol, TypeVar

from foundation.errors import (
    quote,
    InvalidArgumentError,
    KeyrelayError,
    NetworkNotAllowedError,
    PermissionDeniedError,
    PrivateEndpointRequiredError,
)

KEY_ADMIN, ACCESS_ADMIN, CRYPTO_USER, MESSAGING_USER = "key-admin", "access-admin", "crypto-user", "messaging-user"
#: Every role, in the order they are shown.
ROLES = (KEY_ADMIN, ACCESS_ADMIN, CRYPTO_USER, MESSAGING_USER)
#: `admin` stands for every role (what an administrator could do before roles were split).
ADMIN = "admin"
ALL_ROLES = frozenset(ROLES)
T = TypeVar("T")

# Kinds of method: what an entry point does with them.
KEY_MANAGEMENT, KEY_READ, CRYPTO = "key-management", "key-read", "crypto"
ACCESS, INSTANCES = "access", "instances"
#: Kinds a private endpoint serves; key management goes through the gateway.
PRIVATE_ENDPOINT_KINDS = frozenset({KEY_READ, CRYPTO})


@dataclass(frozen=True, slots=True)
class MethodRule:
    """Who may call one RPC: any of `roles`; with `operator_only`, only an operator."""

    kind: str
    roles: frozenset[str]
    operator_only: bool = False


def _rules(kind: str, roles: Iterable[str], methods: str, operator_only: bool = False) -> dict:
    return {m: MethodRule(kind, frozenset(roles), operator_only) for m in methods.split()}


#: Method name -> rule, for every RPC of KeyManagementService and AdminService.
RULES: dict[str, MethodRule] = {
    **_rules(KEY_MANAGEMENT, [KEY_ADMIN],
             "CreateKey EnableKey DisableKey ScheduleKeyDeletion CancelKeyDeletion RotateKey UpdateKey "
             "CreateAlias DeleteAlias"),
    **_rules(KEY_READ, [KEY_ADMIN, CRYPTO_USER, MESSAGING_USER], "DescribeKey"),
    **_rules(KEY_READ, [KEY_ADMIN, CRYPTO_USER], "ListKeys"),
    **_rules(CRYPTO, [CRYPTO_USER],
             "Encrypt Decrypt ReEncrypt GenerateDataKey GenerateDataKeyWithoutPlaintext BatchDecrypt "
             "BatchGenerateDataKey GenerateRandom"),
    **_rules(CRYPTO, [MESSAGING_USER], "SealPublicKey OpenPublicKey"),
    **_rules(INSTANCES, [KEY_ADMIN], "RegisterInstance", operator_only=True),
    **_rules(INSTANCES, [KEY_ADMIN, ACCESS_ADMIN], "DescribeInstance ListInstances"),
    **_rules(ACCESS, [ACCESS_ADMIN],
             "CreateAccessPoint DescribeAccessPoint ListAccessPoints DeleteAccessPoint IssueCredential "
             "ListCredentials RevokeCredential"),
}
#: Cryptographic RPCs: on a dedicated key they belong at the instance's private endpoint.
CRYPTO_METHODS = frozenset(m for m, r in RULES.items() if r.kind == CRYPTO)

_ZONE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
#: A tenant id: 1-64 of a-z 0-9 . _ -, starting with a letter or digit.
TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
#: A dedicated instance id: 1-63 of a-z 0-9 and '-', not starting or ending with '-'.
INSTANCE_ID = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_ROLE_ENUM_PREFIX = "ACCESS_POINT_ROLE_"


def role_from_enum_name(name: str) -> str:
    """`ACCESS_POINT_ROLE_CRYPTO_USER` (the protobuf enum name) -> `crypto-user`; '' when unset or unknown."""
    role = name.removeprefix(_ROLE_ENUM_PREFIX).lower().replace("_", "-")
    return role if role in ROLES or role == ADMIN else ""


def role_enum_name(role: str) -> str:
    """`crypto-user` -> `ACCESS_POINT_ROLE_CRYPTO_USER`, the protobuf enum name of a role."""
    return _ROLE_ENUM_PREFIX + role.upper().replace("-", "_")


def parse_roles(names: Iterable[str]) -> frozenset[str]:
    """The role set named by `names` (`admin` expands to every role); InvalidArgumentError for
    an unknown name or none at all."""
    roles: set[str] = set()
    for name in names:
        if name == ADMIN:
            roles |= ALL_ROLES
        elif name in ALL_ROLES:
            roles.add(name)
        else:
            raise InvalidArgumentError(f"role {quote(name)} is not one of {', '.join(ROLES)} (or {ADMIN}: all of them)")
    if not roles:
        raise InvalidArgumentError(f"roles is empty: give at least one of {', '.join(ROLES)} (or {ADMIN}: all of them)")
    return frozenset(roles)


def sorted_roles(roles: Iterable[str]) -> tuple[str, ...]:
    """Roles in the order of `ROLES`."""
    held = set(roles)
    return tuple(role for role in ROLES if role in held)


class Powers(Protocol):
    """What an access point may do: the fields the policy reads of a principal or a target."""

    tenant_id: str
    roles: frozenset[str]
    key_patterns: tuple[str, ...]
    allowed_zones: tuple[str, ...]
    allowed_cidrs: tuple[str, ...]
    operator: bool


@dataclass(frozen=True, slots=True)
class Principal:
    """The access point a request's client certificate was issued to."""

    tenant_id: str
    access_point_id: str
    name: str
    roles: frozenset[str]
    key_patterns: tuple[str, ...] = ()
    allowed_zones: tuple[str, ...] = ()
    allowed_cidrs: tuple[str, ...] = ()
    operator: bool = False
    credential_serial: str = ""


@dataclass(frozen=True, slots=True)
class Entry:
    """Where a request arrived: its network zone and peer address, and for a private endpoint the
    instance it serves and the tenant that owns it (empty at the gateway)."""

    zone: str
    peer: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    instance_id: str = ""
    instance_tenant: str = ""

    @property
    def private(self) -> bool:
        return bool(self.instance_id)


@dataclass(frozen=True, slots=True)
class InstancePolicy:
    """A dedicated instance's network policy, as the gateway applies it."""

    instance_id: str
    management_zones: tuple[str, ...]
    allow_public_crypto: bool
    private_endpoint: str = ""


@dataclass(frozen=True, slots=True)
class Denial:
    """A refusal: `rule` names the check (for audit records), `error` is what the caller gets."""

    rule: str
    error: KeyrelayError

    @property
    def reason(self) -> str:
        return self.error.reason


def shown(items: Iterable[str], *, most: int = 5, width: int = 80) -> str:
    """A list of names for a message: the first few, each truncated (access points hold up to
    100 patterns, and a message must stay readable and bounded)."""
    items = list(items)
    text = ", ".join(item[:width] for item in items[:most]) or "none"
    return text + (f" and {len(items) - most} more" if len(items) > most else "")


def enforce(denial: Denial | None) -> None:
    """Raise the denial's error, if any."""
    if denial is not None:
        raise denial.error


def valid_zone(zone: str) -> bool:
    """Zone names are 1-32 of a-z, 0-9 and '-', starting with a letter or digit."""
    return bool(_ZONE.fullmatch(zone))


# -- patterns ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16384)
def _segments(pattern: str) -> tuple[str, ...]:
    return tuple(pattern.split("*"))


def glob_match(pattern: str, text: str) -> bool:
    """Whether `text` matches `pattern`, where `*` matches any run of characters (nothing else is
    special). Linear in practice: literal runs are found left to right, which is exact for
    patterns whose only wildcard is `*`, and no pattern can make it backtrack."""
    parts = _segments(pattern)
    if len(parts) == 1:
        return pattern == text
    first, last = parts[0], parts[-1]
    end = len(text) - len(last)
    if end < len(first) or not text.startswith(first) or not text.endswith(last):
        return False
    position = len(first)
    for part in parts[1:-1]:
        if part:
            found = text.find(part, position, end)
            if found < 0:
                return False
            position = found + len(part)
    return True


def key_matches(patterns: Iterable[str], key_id: str, aliases: Iterable[str] = ()) -> bool:
    """True when the key id or one of its aliases matches one of the patterns."""
    names = (key_id, *aliases)
    return any(glob_match(pattern, name) for pattern in patterns for name in names)


def pattern_covers(general: str, specific: str) -> bool:
    """Whether every name `specific` matches, `general` matches too.

    Exact for `*`-only patterns: `general` covers `specific` exactly when it matches the text of
    `specific` with each `*` read as a character no literal of `general` contains. (If it does, each
    of `specific`'s stars lies inside a star of `general`, which absorbs whatever it stands for; if
    it does not, `specific` with its stars replaced by a character absent from `general` is a name
    `specific` matches and `general` does not.) A star in `general`'s literals is impossible, so
    plain matching of the text does it."""
    return glob_match(general, specific)


@functools.lru_cache(maxsize=4096)
def _networks(cidrs: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def cidrs_cover(general: tuple[str, ...], specific: tuple[str, ...]) -> bool:
    """Whether every address `specific` allows, `general` allows (an empty list allows any)."""
    if not general:
        return True
    if not specific:
        return False
    outer = _networks(general)
    return all(
        any(net.version == big.version and net.subnet_of(big) for big in outer) for net in _networks(specific)
    )


def zones_cover(general: tuple[str, ...], specific: tuple[str, ...]) -> bool:
    """Whether every zone `specific` allows, `general` allows (an empty list allows any)."""
    return not general or (bool(specific) and set(specific) <= set(general))


# -- the checks of a request ------------------------------------------------------------------


def check_call(principal: Principal, entry: Entry, method: str) -> Denial | None:
    """Network, entry point, role and operator checks of one call (see the module docstring)."""
    denial = check_entry(principal, entry)
    if denial is not None:
        return denial
    rule = RULES.get(method)
    if entry.private and (rule is None or rule.kind not in PRIVATE_ENDPOINT_KINDS):
        return Denial("endpoint", PermissionDeniedError(
            f"{method} is key management: send it through the gateway. The private endpoint of instance "
            f"{quote(entry.instance_id)} serves cryptography and key reads"
        ))
    return check_role(principal, method)


def check_entry(principal: Principal, entry: Entry) -> Denial | None:
    """The checks of `check_call` that do not depend on the method: the caller's zones and CIDRs,
    and at a private endpoint that the caller's tenant owns the instance. Also applied to requests
    refused before they were decoded, whatever method they named."""
    if principal.allowed_zones and entry.zone not in principal.allowed_zones:
        return Denial("network", NetworkNotAllowedError(
            f"access point {quote(principal.name)} may be used only from zone(s) {shown(principal.allowed_zones)}; "
            f"this request came in on zone {quote(entry.zone)}"
        ))
    if principal.allowed_cidrs and (
        entry.peer is None or not any(entry.peer in net for net in _networks(principal.allowed_cidrs))
    ):
        return Denial("network", NetworkNotAllowedError(
            f"access point {quote(principal.name)} may be used only from {shown(principal.allowed_cidrs)}; "
            f"this request came from {entry.peer or 'an unknown address'}"
        ))
    if entry.private and principal.tenant_id != entry.instance_tenant:
        return Denial("instance-owner", PermissionDeniedError(
            f"access point {quote(principal.name)} belongs to tenant {quote(principal.tenant_id)}, which does not own "
            f"dedicated instance {quote(entry.instance_id)}: use a credential of the instance's tenant"
        ))
    return None


def check_role(principal: Principal, method: str) -> Denial | None:
    """The role and operator checks of `check_call` alone (for a service behind an entry point
    that has made the network checks)."""
    rule = RULES.get(method)
    if rule is None or not principal.roles & rule.roles:
        need = " or ".join(sorted_roles(rule.roles)) if rule else "no role"
        held = ", ".join(sorted_roles(principal.roles)) or "none"
        return Denial("role", PermissionDeniedError(
            f"access point {quote(principal.name)} has role(s) {held}; {method} needs {need}: "
            "use a credential of an access point with that role"
        ))
    if rule.operator_only and not principal.operator:
        return Denial("operator", PermissionDeniedError(
            f"{method} acts for every tenant and is for operators only; access point {quote(principal.name)} is not "
            "an operator: ask your KMS operator"
        ))
    return None


def check_key(principal: Principal, key_id: str, aliases: Iterable[str] = (), *, shown_as: str = "") -> Denial | None:
    """Whether the principal's key patterns cover an existing key (by its id or an alias)."""
    if key_matches(principal.key_patterns, key_id, aliases):
        return None
    return Denial("key", PermissionDeniedError(
        f"access point {quote(principal.name)} may not use key {(shown_as or key_id)[:80]}: it is not covered by its "
        f"key patterns ({shown(principal.key_patterns)})"
    ))


def check_name(principal: Principal, name: str) -> Denial | None:
    """Whether the principal's key patterns cover an alias it creates or removes. "" is a new key
    without an alias, known only by its id: that takes a pattern covering every key (`*`)."""
    if any(glob_match(pattern, name) for pattern in principal.key_patterns):
        return None
    what = f"alias {name[:80]}" if name else "a key without an alias (that takes the key pattern '*')"
    return Denial("key", PermissionDeniedError(
        f"access point {quote(principal.name)} may not create or remove {what}: it is not covered by its key "
        f"patterns ({shown(principal.key_patterns)})"
    ))


def check_route(entry: Entry, method: str, instance: InstancePolicy, key_id: str = "") -> Denial | None:
    """At the gateway, a dedicated instance's own policy for a call on one of its keys: management
    only from its management zones; cryptography only if it allows public crypto."""
    rule = RULES[method]
    if rule.kind in (KEY_MANAGEMENT, KEY_READ):
        zones = instance.management_zones
        if zones and entry.zone not in zones:
            return Denial("instance-zone", NetworkNotAllowedError(
                f"management requests for dedicated instance {quote(instance.instance_id)} are accepted only "
                f"from zone(s) {', '.join(zones)}; this request came in on zone {quote(entry.zone)}"
            ))
    elif rule.kind == CRYPTO and not instance.allow_public_crypto:
        return Denial("private-endpoint", PrivateEndpointRequiredError(
            f"key {key_id or '(new)'} belongs to dedicated instance {quote(instance.instance_id)}: send cryptographic "
            f"requests to its private endpoint {instance.private_endpoint or '(not registered)'} with an "
            "access-point credential"
        ))
    return None


# -- AdminService targets ---------------------------------------------------------------------


def sees(principal: Powers, tenant_id: str) -> bool:
    """Whether objects of `tenant_id` are visible to the principal (its own, or every tenant's
    for an operator)."""
    return principal.operator or tenant_id == principal.tenant_id


def check_tenant(principal: Principal, tenant_id: str) -> Denial | None:
    """Whether the principal may act for `tenant_id`."""
    if sees(principal, tenant_id):
        return None
    return Denial("tenant", PermissionDeniedError(
        f"access point {quote(principal.name)} administers tenant {quote(principal.tenant_id)}, not {quote(tenant_id)}; "
        "use a credential of that tenant, or ask your KMS operator"
    ))


def check_grant(holder: Principal, target: Powers, *, action: str = "create") -> Denial | None:
    """Whether the principal may `action` (create, delete, issue a credential to, revoke a
    credential of) an access point with `target`'s powers: the non-escalation rule (its tenant,
    and roles, key patterns, zones and CIDRs within the principal's; operator only from an
    operator)."""
    tenant = check_tenant(holder, target.tenant_id)
    if tenant is not None:
        return tenant
    problems = []
    if target.operator and not holder.operator:
        problems.append("with the operator property (only an operator grants it)")
    extra = target.roles - holder.roles
    if extra:
        problems.append(f"with role(s) {', '.join(sorted_roles(extra))} it does not hold")
    uncovered = [p for p in target.key_patterns if not any(pattern_covers(g, p) for g in holder.key_patterns)]
    if uncovered:
        problems.append(f"with key pattern(s) {shown(uncovered)} outside its own ({shown(holder.key_patterns)})")
    if not zones_cover(holder.allowed_zones, target.allowed_zones):
        problems.append(f"usable from zones beyond its own ({shown(holder.allowed_zones)})")
    if not cidrs_cover(holder.allowed_cidrs, target.allowed_cidrs):
        problems.append(f"usable from addresses beyond its own ({shown(holder.allowed_cidrs)})")
    if not problems:
        return None
    return Denial("escalation", PermissionDeniedError(
        f"access point {quote(holder.name)} may not {action} an access point {'; '.join(problems)}: an access point "
        "creates, deletes and issues or revokes credentials only for access points within its own roles, key "
        "patterns, zones and CIDRs"
    ))


def visible_keys(principal: Principal, keys: Iterable[T]) -> list[T]:
    """The keys (anything with `key_id` and `aliases`) the principal's key patterns cover: what
    ListKeys shows it."""
    return [key for key in keys if key_matches(principal.key_patterns, key.key_id, key.aliases)]


def zone_for(listener_zone: str, peer_ip: ipaddress._BaseAddress | None, zone_cidrs: dict[str, tuple[str, ...]]) -> str:
    """The zone of a request: the most specific CIDR zone containing the client's address, else the
    zone of the listener it arrived on."""
    best: tuple[int, str] | None = None
    if peer_ip is not None:
        for zone, cidrs in zone_cidrs.items():
            for network in _networks(tuple(cidrs)):
                if peer_ip.version == network.version and peer_ip in network:
                    if best is None or network.prefixlen > best[0]:
                        best = (network.prefixlen, zone)
    return best[1] if best else listener_zone
