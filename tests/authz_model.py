"""A reference model of who may do what in keyrelay, written from the README: its role table (read
from the README itself) and the rules stated around it. It shares no code with
`foundation.access_policy`; tests compare the two, and the real servers with this.

Outcomes are `(status name, reason)` pairs, e.g. `("PERMISSION_DENIED", "NETWORK_NOT_ALLOWED")`,
or `ALLOWED` when no rule refuses.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
ROLE_COLUMNS = ("key-admin", "access-admin", "crypto-user", "messaging-user")
ALLOWED = ("OK", "")
DENIED = ("PERMISSION_DENIED", "PERMISSION_DENIED")
NETWORK = ("PERMISSION_DENIED", "NETWORK_NOT_ALLOWED")
PRIVATE_ONLY = ("PERMISSION_DENIED", "PRIVATE_ENDPOINT_REQUIRED")
KEY_NOT_FOUND = ("NOT_FOUND", "KEY_NOT_FOUND")
ALIAS_NOT_FOUND = ("NOT_FOUND", "ALIAS_NOT_FOUND")


@dataclass(frozen=True)
class Row:
    """One line of the README's role table."""

    roles: frozenset[str]
    operator_only: bool
    at_private_endpoint: bool


def role_table(text: str | None = None) -> dict[str, Row]:
    """The README's role table: RPC -> who may call it."""
    text = README.read_text() if text is None else text
    lines = text.split("<!-- role-table -->", 1)[1].strip().splitlines()
    header = [cell.strip(" `") for cell in lines[0].strip("|").split("|")]
    assert header[1:5] == list(ROLE_COLUMNS), header
    rows = {}
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        method = cells[0].strip("`")
        marks = dict(zip(ROLE_COLUMNS, cells[1:5]))
        rows[method] = Row(
            roles=frozenset(role for role, mark in marks.items() if mark in ("yes", "operator")),
            operator_only="operator" in marks.values(),
            at_private_endpoint=cells[5] == "yes",
        )
    return rows


@dataclass(frozen=True)
class Spec:
    """An access point's powers, as the README describes them."""

    tenant: str
    roles: frozenset[str]
    patterns: tuple[str, ...] = ()
    zones: tuple[str, ...] = ()
    cidrs: tuple[str, ...] = ()
    operator: bool = False


# -- the README's rules -----------------------------------------------------------------------------


def name_matches(pattern: str, name: str) -> bool:
    """`*` matches any run of characters; patterns hold nothing else that is special."""
    return fnmatch.fnmatchcase(name, pattern)


def name_matches_any(patterns, name: str) -> bool:
    return any(name_matches(p, name) for p in patterns)


def key_covered(spec: Spec, key_id: str, aliases) -> bool:
    """A key is covered when its id or one of its aliases matches a pattern."""
    return any(name_matches(p, n) for p in spec.patterns for n in (key_id, *aliases))


def name_covered(spec: Spec, name: str) -> bool:
    """An alias created or removed must match a pattern; a key without one needs `*`."""
    return any(name_matches(p, name) for p in spec.patterns)


def pattern_within(general: str, specific: str) -> bool:
    """Every key `specific` matches, `general` matches too: `specific` with its stars read as a
    character no key name holds must match `general`."""
    return name_matches(general, specific.replace("*", "\x00"))


def within(holder: Spec, target: Spec) -> bool:
    """The README's coverage: roles, key patterns, zones, CIDRs, tenant, operator."""
    if not (holder.operator or target.tenant == holder.tenant):
        return False
    if target.operator and not holder.operator:
        return False
    if not target.roles <= holder.roles:
        return False
    if not all(any(pattern_within(g, s) for g in holder.patterns) for s in target.patterns):
        return False
    if holder.zones and not (target.zones and set(target.zones) <= set(holder.zones)):
        return False
    if holder.cidrs:
        if not target.cidrs:
            return False
        outer = [ipaddress.ip_network(c) for c in holder.cidrs]
        for cidr in target.cidrs:
            inner = ipaddress.ip_network(cidr)
            if not any(o.version == inner.version and inner.subnet_of(o) for o in outer):
                return False
    return True


def sees(spec: Spec, tenant: str) -> bool:
    return spec.operator or spec.tenant == tenant


@dataclass(frozen=True)
class Entry:
    """Where a request arrives: a gateway zone, or the private endpoint of an instance."""

    zone: str
    private: bool = False
    instance_tenant: str = ""


def call_outcome(table: dict[str, Row], spec: Spec, entry: Entry, method: str, peer: str = "127.0.0.1"):
    """What the README says of a call before any key is looked at (None: it goes on)."""
    if spec.zones and entry.zone not in spec.zones:
        return NETWORK
    if spec.cidrs and not any(ipaddress.ip_address(peer) in ipaddress.ip_network(c) for c in spec.cidrs):
        return NETWORK
    row = table[method]
    if entry.private and (spec.tenant != entry.instance_tenant or not row.at_private_endpoint):
        return DENIED
    if not spec.roles & row.roles:
        return DENIED
    if row.operator_only and not spec.operator:
        return DENIED
    return None


# -- a world of keys --------------------------------------------------------------------------------


@dataclass
class Key:
    key_id: str
    tenant: str
    instance: str
    aliases: list[str] = field(default_factory=list)


@dataclass
class World:
    """The keys of every tenant and the instance policy, as the test set them up."""

    keys: list[Key]
    instance_id: str
    management_zones: tuple[str, ...]

    def find(self, tenant: str, ref: str, *, instance: str | None = None) -> Key | None:
        """The key a reference names in a tenant (on one instance when `instance` is given)."""
        for key in self.keys:
            if key.tenant != tenant or (instance is not None and key.instance != instance):
                continue
            if ref == key.key_id or ref in key.aliases:
                return key
        return None


MANAGEMENT = re.compile(r"^(CreateKey|DescribeKey|ListKeys|EnableKey|DisableKey|ScheduleKeyDeletion|"
                        r"CancelKeyDeletion|RotateKey|UpdateKey|CreateAlias|DeleteAlias)$")


def keys_outcome(world: World, spec: Spec, entry: Entry, method: str, refs, new_names=()):
    """What the README says of the keys a call names, in order: each new alias must be covered;
    each reference must name a key of the caller's tenant (at a private endpoint, one of its
    instance) and be covered; at the gateway, every key must be on one KMS, and a dedicated key's
    instance refuses management from other zones and cryptography altogether. `refs` are
    (reference, kind) with kind "key" or "alias" (a name the call removes)."""
    for name in new_names:
        if not name_covered(spec, name):
            return DENIED
    found = []
    for ref, kind in refs:
        key = world.find(spec.tenant, ref, instance=world.instance_id if entry.private else None)
        if key is None:
            return ALIAS_NOT_FOUND if ref.startswith("alias/") else KEY_NOT_FOUND
        covered = name_covered(spec, ref) if kind == "alias" else key_covered(spec, key.key_id, key.aliases)
        if not covered:
            return DENIED
        found.append(key)
    if entry.private:
        return ALLOWED
    if len({key.instance for key in found}) > 1:
        return ("INVALID_ARGUMENT", "INVALID_ARGUMENT")
    for key in found:
        if key.instance:
            if MANAGEMENT.match(method):
                if world.management_zones and entry.zone not in world.management_zones:
                    return NETWORK
            else:
                return PRIVATE_ONLY
    return ALLOWED
