"""The authorization module against the README's rules (`authz_model`), over the whole space of
roles, patterns, zones, CIDRs and methods that hypothesis generates: its role table is the
README's, pattern coverage is exact, each check answers what the model answers, and nothing any
access point can mint, and what that mints in turn, is more than it had."""

from __future__ import annotations

import dataclasses
import ipaddress
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import authz_model as model
from foundation import access_policy as policy
from foundation.errors import KeyrelayError
from keyrelay.v1 import admin_pb2, kms_pb2

ROLES = sorted(policy.ALL_ROLES)
ZONES = ("public", "vpc", "ops", "private")
CIDRS = ("127.0.0.0/8", "127.0.0.1/32", "10.0.0.0/8", "10.1.0.0/16", "192.168.0.0/16", "::1/128", "fd00::/8")
PEERS = ("127.0.0.1", "10.1.2.3", "10.9.9.9", "192.168.4.4", "::1", "fd00::7", "8.8.8.8")
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Names from a small alphabet, so that patterns and names collide often.
_NAME_CHARS = "ab-/"
names = st.text(_NAME_CHARS, max_size=8)
patterns = st.text(_NAME_CHARS + "*", max_size=8)


def _reference_glob(pattern: str, text: str) -> bool:
    return re.fullmatch(".*".join(map(re.escape, pattern.split("*"))), text, re.DOTALL) is not None


def _outcome(denial: policy.Denial | None):
    if denial is None:
        return model.ALLOWED
    return denial.error.code.name, denial.error.reason


# -- the role table -----------------------------------------------------------------------------------


def test_the_readme_role_table_is_the_policy():
    """Every RPC of KeyManagementService and AdminService is in the README's table and in the
    policy's, with the same roles, operator rule and private-endpoint column."""
    rpcs = set(kms_pb2.DESCRIPTOR.services_by_name["KeyManagementService"].methods_by_name)
    rpcs |= set(admin_pb2.DESCRIPTOR.services_by_name["AdminService"].methods_by_name)
    table = model.role_table()
    assert set(table) == set(policy.RULES) == rpcs
    for method, rule in policy.RULES.items():
        row = table[method]
        assert (row.roles, row.operator_only, row.at_private_endpoint) == (
            rule.roles, rule.operator_only, rule.kind in policy.PRIVATE_ENDPOINT_KINDS
        ), method


def test_a_broken_role_table_is_noticed():
    """The comparison above fails when the README's table is changed in any cell."""
    text = model.README.read_text()
    table = model.role_table(text)
    broken = text.replace("| `Encrypt` | | | yes |", "| `Encrypt` | yes | | yes |", 1)
    assert broken != text and model.role_table(broken)["Encrypt"] != table["Encrypt"]
    broken = text.replace("| `RegisterInstance` | operator |", "| `RegisterInstance` | yes |", 1)
    assert broken != text and not model.role_table(broken)["RegisterInstance"].operator_only


# -- patterns -----------------------------------------------------------------------------------------


@SETTINGS
@given(patterns, names)
def test_glob_match_is_star_matching(pattern, name):
    assert policy.glob_match(pattern, name) == _reference_glob(pattern, name)


def test_glob_match_has_no_special_characters_but_star():
    """fnmatch would read these as classes and single-character wildcards; keyrelay does not."""
    assert policy.glob_match("alias/[ab]", "alias/[ab]") and not policy.glob_match("alias/[ab]", "alias/a")
    assert policy.glob_match("alias/?", "alias/?") and not policy.glob_match("alias/?", "alias/x")


def test_glob_match_cannot_be_made_to_backtrack():
    """Patterns are attacker-chosen input (an access-admin writes them): the worst case of a
    backtracking matcher (a^n against (*a)^k b) answers at once here."""
    pattern = "*a" * 120 + "b"
    assert not policy.glob_match(pattern, "a" * 256)
    assert policy.glob_match(pattern, "a" * 200 + "b")


@SETTINGS
@given(patterns, patterns, st.lists(names, min_size=1, max_size=4))
def test_pattern_coverage_is_exact(general, specific, fillers):
    """`pattern_covers(g, s)` holds exactly when every name s matches, g matches too: when it
    holds, s with its stars filled in by any names is matched by g; when it does not, s with its
    stars filled by a character g lacks is a name s matches and g does not."""
    parts = specific.split("*")
    filled = parts[0] + "".join(fillers[i % len(fillers)] + part for i, part in enumerate(parts[1:]))
    assert _reference_glob(specific, filled)
    witness = specific.replace("*", "#")
    if policy.pattern_covers(general, specific):
        assert _reference_glob(general, filled)
        assert _reference_glob(general, witness)
    else:
        assert _reference_glob(specific, witness) and not _reference_glob(general, witness)
    assert policy.pattern_covers(general, specific) == model.pattern_within(general, specific)


@SETTINGS
@given(patterns, patterns, patterns)
def test_pattern_coverage_is_a_preorder(a, b, c):
    """Reflexive and transitive, so what a minted access point mints is covered by the first."""
    assert policy.pattern_covers(a, a)
    if policy.pattern_covers(a, b) and policy.pattern_covers(b, c):
        assert policy.pattern_covers(a, c)


@SETTINGS
@given(st.lists(st.sampled_from(CIDRS), max_size=3), st.lists(st.sampled_from(CIDRS), max_size=3))
def test_cidr_coverage_is_sound(general, specific):
    """When CIDRs are covered, every address the specific list allows, the general list allows."""
    if policy.cidrs_cover(tuple(general), tuple(specific)):
        for peer in PEERS:
            address = ipaddress.ip_address(peer)
            allowed_by = lambda cidrs: not cidrs or any(address in ipaddress.ip_network(c) for c in cidrs)  # noqa: E731
            if allowed_by(specific):
                assert allowed_by(general)


# -- the checks of a call -----------------------------------------------------------------------------

specs = st.builds(
    model.Spec,
    tenant=st.sampled_from(["acme", "globex"]),
    roles=st.frozensets(st.sampled_from(ROLES), min_size=1),
    patterns=st.lists(st.sampled_from(["*", "alias/*", "alias/team-a-*", "alias/team-*", "alias/team-a-web",
                                       "alias/team-a-*-prod", "*-web", "3f2c*", "alias/ops-*"]),
                      max_size=3, unique=True).map(tuple),
    zones=st.lists(st.sampled_from(ZONES), max_size=3, unique=True).map(tuple),
    cidrs=st.lists(st.sampled_from(CIDRS), max_size=2, unique=True).map(tuple),
    operator=st.booleans(),
)


def principal(spec: model.Spec, name: str = "caller") -> policy.Principal:
    return policy.Principal(spec.tenant, f"ap-{name}", name, spec.roles, spec.patterns, spec.zones, spec.cidrs,
                            spec.operator)


def grant(spec: model.Spec) -> policy.Principal:
    """An access point with these powers, as the target of an AdminService call."""
    return principal(spec, "target")


def target(tenant: str, roles, patterns=(), zones=(), cidrs=(), operator=False) -> policy.Principal:
    return grant(model.Spec(tenant, frozenset(roles), tuple(patterns), tuple(zones), tuple(cidrs), operator))


entries = st.builds(
    lambda zone, private, owner: model.Entry("private" if private else zone, private, owner if private else ""),
    st.sampled_from(ZONES[:3]), st.booleans(), st.sampled_from(["acme", "globex"]),
)


@SETTINGS
@given(specs, entries, st.sampled_from(sorted(policy.RULES)), st.sampled_from(PEERS))
def test_check_call_is_the_readme(spec, entry, method, peer):
    table = model.role_table()
    where = policy.Entry(entry.zone, ipaddress.ip_address(peer), "acme-vault" if entry.private else "",
                         entry.instance_tenant)
    expected = model.call_outcome(table, spec, entry, method, peer) or model.ALLOWED
    assert _outcome(policy.check_call(principal(spec), where, method)) == expected


@SETTINGS
@given(specs, st.sampled_from(["alias/team-a-web", "alias/team-b-db", "alias/ops-1", "alias/team-a-x-prod", ""]),
       st.lists(st.sampled_from(["alias/team-a-web", "alias/x", "alias/team-a-1-prod"]), max_size=2))
def test_key_and_name_checks_are_the_readme(spec, name, aliases):
    key_id = "3f2c0a1b-0000-4000-8000-000000000001"
    assert (policy.check_key(principal(spec), key_id, aliases) is None) == model.key_covered(spec, key_id, aliases)
    assert (policy.check_name(principal(spec), name) is None) == model.name_covered(spec, name)


@SETTINGS
@given(specs, specs)
def test_check_grant_is_the_readme(holder, target):
    denial = policy.check_grant(principal(holder), grant(target))
    assert (denial is None) == model.within(holder, target)
    assert denial is None or (denial.error.code.name, denial.reason) == model.DENIED


# -- escalation ---------------------------------------------------------------------------------------

# Candidate access points are built from the start's own powers, stretched a little, so that the
# search tries near misses rather than obviously impossible ones.
_STRETCH = ("*", "-*", "*-", "a", "/*", "")


@st.composite
def near(draw, start: model.Spec) -> model.Spec:
    def stretch(pattern: str) -> str:
        # Replace a slice (often empty) by a filler (often a wildcard): widen, narrow or shift.
        stars = [i for i, c in enumerate(pattern) if c == "*"]
        if stars and draw(st.booleans()):  # near a wildcard, where coverage is subtle
            cut = max(0, draw(st.sampled_from(stars)) - draw(st.integers(0, 2)))
        else:
            cut = draw(st.integers(0, len(pattern)))
        end = draw(st.integers(cut, min(len(pattern), cut + 2)))
        return pattern[:cut] + draw(st.sampled_from(_STRETCH)) + pattern[end:]

    def either(same, other):
        # Mostly the start's own value, so that a candidate differs in one or two ways at a time.
        return draw(st.one_of(st.just(same), st.just(same), st.just(same), other))

    pool = list(start.patterns) or ["alias/a"]
    return model.Spec(
        tenant=either(start.tenant, st.just("globex")),
        roles=either(start.roles, st.frozensets(st.sampled_from(ROLES), min_size=1)),
        patterns=tuple(draw(st.lists(st.one_of(st.sampled_from(pool), st.sampled_from(pool).map(stretch)),
                                     max_size=3))),
        zones=either(start.zones, st.lists(st.sampled_from(ZONES), max_size=3, unique=True).map(tuple)),
        cidrs=either(start.cidrs, st.lists(st.sampled_from(CIDRS), max_size=2, unique=True).map(tuple)),
        operator=either(False, st.just(True)),
    )


@st.composite
def escalation_worlds(draw):
    start = draw(specs.filter(lambda s: not s.operator))
    # Only an access-admin mints anything; a start without the role is trivially contained.
    start = dataclasses.replace(start, roles=start.roles | {"access-admin"})
    candidates = draw(st.lists(near(start), min_size=5, max_size=25))
    return start, candidates


def _entry_allowed_to(spec: model.Spec) -> policy.Entry:
    """A zone and an address the access point may be used from."""
    zone = spec.zones[0] if spec.zones else "public"
    peer = next(iter(ipaddress.ip_network(spec.cidrs[0]))) if spec.cidrs else ipaddress.ip_address("127.0.0.1")
    return policy.Entry(zone, peer)


def _names_from(spec: model.Spec) -> set[str]:
    """Names that probe a spec's patterns: each with its stars filled in several ways."""
    probes = {"", "x", "alias/", "alias/team-a-web", "3f2c0a1b-0000-4000-8000-000000000001"}
    for pattern in spec.patterns:
        for filler in ("", "a", "-", "/", "zz", "#"):
            probes.add(pattern.replace("*", filler))
    return probes


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(escalation_worlds())
def test_nothing_minted_is_more_than_the_start(world):
    """From a non-operator start, create every candidate any held access point may create and
    take credentials of every candidate any held one may issue to, again with what was gained,
    until nothing changes. Nothing held then has a role, a key, a zone, an address or a tenant the
    start lacked, and none is an operator."""
    start, candidates = world
    held = [start]
    changed = True
    while changed:
        changed = False
        for holder in list(held):
            p = principal(holder)
            entry = _entry_allowed_to(holder)
            for method, action in (("CreateAccessPoint", "create"), ("IssueCredential", "issue a credential to")):
                if policy.check_call(p, entry, method) is not None:
                    assert holder is not start  # the start is an access-admin used from where it may be
                    continue
                for candidate in candidates:
                    if candidate not in held and policy.check_grant(p, grant(candidate), action=action) is None:
                        held.append(candidate)
                        changed = True
    probes = _names_from(start).union(*(_names_from(h) for h in held))
    for gained in held:
        assert gained.tenant == start.tenant and not gained.operator
        assert gained.roles <= start.roles
        for name in probes:
            if model.name_matches_any(gained.patterns, name):
                assert model.name_matches_any(start.patterns, name), (gained, name)
        for zone in ZONES:
            if not gained.zones or zone in gained.zones:
                assert not start.zones or zone in start.zones
        for peer in PEERS:
            address = ipaddress.ip_address(peer)
            if not gained.cidrs or any(address in ipaddress.ip_network(c) for c in gained.cidrs):
                assert not start.cidrs or any(address in ipaddress.ip_network(c) for c in start.cidrs)


def test_an_operator_grants_the_operator_property_and_other_tenants():
    """The one way to cross tenants: an operator, within its own roles and patterns."""
    operator = policy.Principal("ops", "ap-op", "op", frozenset({"access-admin", "crypto-user"}), ("alias/ops-*",),
                                operator=True)
    assert policy.check_grant(operator, target("acme", frozenset({"crypto-user"}), ("alias/ops-1",))) is None
    assert policy.check_grant(operator, target("acme", frozenset({"access-admin"}), ("alias/ops-*",),
                                               operator=True)) is None
    denial = policy.check_grant(operator, target("acme", frozenset({"crypto-user"}), ("*",)))
    assert denial is not None and "key pattern(s) *" in denial.error.message
    denial = policy.check_grant(operator, target("acme", frozenset({"key-admin"}), ("alias/ops-1",)))
    assert denial is not None and "role(s) key-admin" in denial.error.message


def test_denials_say_what_is_beyond_the_caller():
    caller = policy.Principal("acme", "ap-1", "team-a-admin", frozenset({"access-admin", "crypto-user"}),
                              ("alias/team-a-*",), ("public",))
    denial = policy.check_grant(caller, target("acme", frozenset({"key-admin", "crypto-user"}), ("*",),
                                               (), (), True))
    assert denial.rule == "escalation" and isinstance(denial.error, KeyrelayError)
    message = denial.error.message
    for part in ("'team-a-admin'", "operator property", "role(s) key-admin", "key pattern(s) *",
                 "zones beyond its own (public)"):
        assert part in message
    other = policy.check_grant(caller, target("globex", frozenset({"crypto-user"})))
    assert other.rule == "tenant" and "'globex'" in other.error.message


@pytest.mark.parametrize("names", [["admin"], ["key-admin", "admin"], ROLES])
def test_admin_stands_for_every_role(names):
    assert policy.parse_roles(names) == policy.ALL_ROLES


@pytest.mark.parametrize("names", [[], ["root"], [""], ["Admin"]])
def test_unknown_or_no_roles_are_refused(names):
    with pytest.raises(KeyrelayError) as caught:
        policy.parse_roles(names)
    assert caught.value.code.name == "INVALID_ARGUMENT"
