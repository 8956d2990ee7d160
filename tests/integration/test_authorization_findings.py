"""What a security review of the running cluster found, each tried again against a real gateway,
shared node and private endpoint (`InProcessCluster`), and each now refused:

1. a key-scoped administrator, or any access point of the operator tenant, minting broader access;
2. a tenant administrator registering (squatting) an instance id, with endpoints of its choosing;
3. another tenant's credential used at a private endpoint, which also had no rate limit or audit;
4. a batch of made-up key ids turning one call into a flood of registry lookups;
5. an alias moved between the gateway's check and the node's use, switching keys;
6. a request id reserving keys on two instances, or telling one tenant of another's.

Plus an escalation search: from a generated credential, everything it can create or issue
credentials to, and what those can, through the real gateway, never reaches beyond it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import uuid

import grpc
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import authz_model as model
from client_sdk import KmsClient
from client_sdk.cli import main as keyrelay
from foundation import audit
from foundation.blob_formats import encode_header
from foundation.errors import (
    BatchTooLargeError,
    CredentialLimitReachedError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
)
from foundation.wire import MAX_BATCH_KEYS, TENANT_METADATA_KEY
from inprocess_cluster import InProcessCluster
from keyrelay.v1 import kms_pb2, kms_pb2_grpc

pytestmark = pytest.mark.hsm

INSTANCE = "acme-vault"
BURST = 2500


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, softhsm):
    from kms_gateway.config import RateLimitConfig

    # Rate limits on, with buckets large enough for every test but the one that exhausts its own
    # tenant's; a long registry cache, so that a moved alias meets a cached record.
    served = InProcessCluster(
        tmp_path_factory.mktemp("findings"),
        gateway={"rate_limit": RateLimitConfig(1.0, BURST), "registry_cache_seconds": 300,
                 "registry_negative_cache_seconds": 300},
        private_endpoint={"requests_per_second": 1.0, "burst": 30},
    ).start()
    with served.admin() as operator:
        operator.register_instance(INSTANCE, "acme", [served.dedicated_target], served.private_target)
    yield served
    served.stop()


def access_point(cluster, tenant, roles, patterns=("*",), zones=(), cidrs=(), operator=False):
    """An access point made by the bootstrap operator, and its credential."""
    with cluster.admin() as admin:
        point = admin.create_access_point(tenant, f"ap-{uuid.uuid4().hex[:6]}", roles, patterns, zones, cidrs,
                                          operator=operator)
        return point, cluster.issue(point.access_point_id, admin)


def kms(cluster, credentials, zone="public", *, private: bool = True) -> KmsClient:
    """A client at a gateway zone that sends cryptography on the instance's keys to its private
    endpoint (with `private`), or everything to the gateway."""
    return KmsClient(cluster.zone_targets[zone], credentials=credentials.bundle, timeout=30,
                     private_endpoints={INSTANCE: cluster.private_target} if private else {})


# -- 1. escalation through AdminService ------------------------------------------------------------


def test_a_key_scoped_administrator_cannot_mint_more_than_it_has(cluster):
    _, creds = access_point(cluster, "acme", ["admin"], ["alias/team-a-*"], ["public"])
    with cluster.admin(creds) as scoped:
        for roles, patterns, zones in ((["admin"], ["*"], ["public"]), (["crypto-user"], ["*"], ["public"]),
                                       (["crypto-user"], ["alias/team-*"], ["public"]),
                                       (["crypto-user"], ["alias/team-a-*"], [])):
            with pytest.raises(PermissionDeniedError, match="access points within its own"):
                scoped.create_access_point("acme", "wider", roles, patterns, zones)
        # Within its limits it delegates, and what it made can go no further either.
        app = scoped.create_access_point("acme", "team-a-app", ["access-admin", "crypto-user"],
                                         ["alias/team-a-web"], ["public"])
        app_creds = cluster.issue(app.access_point_id, scoped)
    with cluster.admin(app_creds) as app_admin:
        with pytest.raises(PermissionDeniedError):
            app_admin.create_access_point("acme", "again", ["crypto-user"], ["alias/team-a-*"], ["public"])
        assert app_admin.create_access_point("acme", "ok", ["crypto-user"], ["alias/team-a-web"], ["public"]).roles == (
            "crypto-user",
        )


def test_the_operator_tenant_implies_nothing(cluster):
    """An access point of the operator tenant without the operator property is a tenant like any
    other; with it, its key patterns still bound what it grants."""
    with kms(cluster, access_point(cluster, "dev", ["admin"])[1]) as dev:
        secret = dev.encrypt(dev.create_key(alias="alias/dev-secret").key_id, b"dev's secret").ciphertext_blob
    _, plain = access_point(cluster, "operator", ["admin"], ["alias/ops-*"])
    _, flagged = access_point(cluster, "operator", ["admin"], ["alias/ops-*"], operator=True)
    with cluster.admin(plain) as ops:
        with pytest.raises(PermissionDeniedError, match="administers tenant 'operator', not 'dev'"):
            ops.create_access_point("dev", "stolen", ["crypto-user"], ["*"])
        with pytest.raises(NotFoundError):
            ops.describe_instance(INSTANCE)
    with cluster.admin(flagged) as ops:
        with pytest.raises(PermissionDeniedError, match=r"key pattern\(s\) \*"):
            ops.create_access_point("dev", "stolen", ["crypto-user"], ["*"])
        within = ops.create_access_point("dev", "ops-app", ["crypto-user"], ["alias/ops-*"])
        creds = cluster.issue(within.access_point_id, ops)
    with kms(cluster, creds) as app, pytest.raises(PermissionDeniedError, match="not covered"):
        app.decrypt(secret)


# -- 2. instance squatting ------------------------------------------------------------------------


def test_only_an_operator_registers_instances(cluster):
    _, creds = access_point(cluster, "acme", ["admin"])
    with cluster.admin(creds) as tenant_admin:
        for tenant in ("acme", "globex"):
            with pytest.raises(PermissionDeniedError, match="operators only"):
                tenant_admin.register_instance("squatted", tenant, ["203.0.113.9:7101"], "203.0.113.9:7102",
                                               allow_public_crypto=True)
        assert [i.instance_id for i in tenant_admin.list_instances().instances] == [INSTANCE]
    with cluster.admin() as operator, pytest.raises(NotFoundError):
        operator.describe_instance("squatted")


# -- 3. private endpoints ----------------------------------------------------------------------------


def test_a_private_endpoint_serves_only_its_tenant_with_limits_and_audit(cluster):
    _, other = access_point(cluster, "globex", ["crypto-user"])
    _, own = access_point(cluster, "acme", ["admin"])
    with KmsClient(cluster.private_target, credentials=other.bundle, timeout=30) as stranger:
        with pytest.raises(PermissionDeniedError, match="does not own dedicated instance 'acme-vault'"):
            stranger.generate_random(16)
        # Refused calls are charged too, so a stranger cannot hammer the endpoint for free.
        with pytest.raises(ResourceExhaustedError, match="rate limit"):
            for _ in range(100):
                with pytest.raises(PermissionDeniedError):
                    stranger.generate_random(16)
    with KmsClient(cluster.private_target, credentials=own.bundle, timeout=30) as owner:
        assert len(owner.generate_random(16)) == 16
        with pytest.raises(ResourceExhaustedError, match="rate limit"):
            for _ in range(100):
                owner.generate_random(16)
    records = [r for r in _records(cluster.private_audit) if r["operation"] == "GenerateRandom"]
    tenants = {(r["tenant"], r["status"], r["denied_by"]) for r in records}
    assert ("globex", "PERMISSION_DENIED", "instance-owner") in tenants
    assert ("acme", "OK", "") in tenants and ("acme", "RESOURCE_EXHAUSTED", "") in tenants
    assert all(r["route"] == "local" and r["zone"] == "private" for r in records)
    report = audit.verify(cluster.private_audit)
    assert report.ok and report.records >= len(records)
    assert keyrelay(["audit", "verify", str(cluster.private_audit)]) == 0


def _records(path):
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]


# -- 4. batch amplification ---------------------------------------------------------------------------


def _forged_blob() -> bytes:
    """A well-formed ciphertext blob naming a random key id."""
    return encode_header(str(uuid.uuid4()), 1, os.urandom(12)) + os.urandom(32)


def _count_resolutions(cluster):
    """Wrap the shared node's registry lookups: returns (counter dict) of calls and peak concurrency."""
    registry = cluster.shared._registry
    original = registry.resolve
    seen = {"calls": 0, "in_flight": 0, "peak": 0}

    async def counting(tenant_id, ref):
        seen["calls"] += 1
        seen["in_flight"] += 1
        seen["peak"] = max(seen["peak"], seen["in_flight"])
        try:
            await asyncio.sleep(0.005)  # long enough for concurrent lookups to overlap
            return await original(tenant_id, ref)
        finally:
            seen["in_flight"] -= 1

    registry.resolve = counting
    return seen, lambda: setattr(registry, "resolve", original)


def test_a_batch_of_made_up_keys_costs_its_size_and_a_bounded_number_of_lookups(cluster):
    seen, restore = _count_resolutions(cluster)
    try:
        _, creds = access_point(cluster, "flood", ["crypto-user"])
        with kms(cluster, creds, private=False) as flood:
            # 1000 distinct made-up keys: refused before any lookup, but charged 1000 requests.
            many = [(_forged_blob(), {}) for _ in range(1000)]
            for _ in range(2):
                with pytest.raises(BatchTooLargeError, match=f"at most {MAX_BATCH_KEYS}"):
                    flood.batch_decrypt(many)
            assert seen["calls"] == 0
            with pytest.raises(ResourceExhaustedError, match="rate limit"):
                flood.batch_decrypt(many)
        _, creds = access_point(cluster, "flood-2", ["crypto-user"])
        with kms(cluster, creds, private=False) as flood:
            # 1000 items over 100 made-up keys: at most 100 lookups, concurrent but bounded, then none.
            keys = [_forged_blob() for _ in range(MAX_BATCH_KEYS)]
            items = [(keys[i % MAX_BATCH_KEYS], {}) for i in range(1000)]
            results = flood.batch_decrypt(items)
            assert all(isinstance(r.error, NotFoundError) for r in results)
            assert 0 < seen["calls"] <= MAX_BATCH_KEYS
            assert 1 < seen["peak"] <= 16
            before = seen["calls"]
            flood.batch_decrypt(items)
            assert seen["calls"] == before  # "no such key" is remembered
            with pytest.raises(ResourceExhaustedError):
                flood.batch_decrypt(items)  # 2500 tokens: two batches of 1000 and not a third
    finally:
        restore()


def test_malformed_references_and_names_cost_no_lookup_and_are_not_echoed(cluster):
    seen, restore = _count_resolutions(cluster)
    try:
        _, creds = access_point(cluster, "hostile", ["admin"], ["alias/h-*"])
        with kms(cluster, creds, private=False) as hostile:
            results = hostile.batch_generate_data_key([(f"x{n}", 16, {}) for n in range(MAX_BATCH_KEYS)])
            assert all(isinstance(r.error, InvalidArgumentError) for r in results)
            huge = "alias/" + "h" * 100_000
            for call in (lambda: hostile.create_key(alias=huge), lambda: hostile.create_alias(huge, str(uuid.uuid4())),
                         lambda: hostile.encrypt(huge, b"x"), lambda: hostile.create_alias("", str(uuid.uuid4()))):
                with pytest.raises(InvalidArgumentError) as caught:
                    call()
                assert len(caught.value.message) < 300
        assert seen["calls"] == 0
    finally:
        restore()


def test_a_key_created_through_the_gateway_is_found_at_once_despite_a_cached_miss(cluster):
    _, creds = access_point(cluster, "fresh", ["admin"])
    with kms(cluster, creds) as fresh:
        with pytest.raises(NotFoundError):
            fresh.encrypt("alias/late", b"x")
        fresh.create_key(alias="alias/late")
        assert fresh.encrypt("alias/late", b"x").key_id


# -- 5. the alias race ------------------------------------------------------------------------------


def test_a_moved_alias_cannot_switch_the_key_a_call_was_allowed(cluster):
    """The caller may use key X only (by id). It encrypts with alias/moving -> X, which the gateway
    caches; the alias moves to Y behind the gateway's back; the next call still uses X (or is
    refused), never Y."""
    _, admin_creds = access_point(cluster, "race", ["admin"])
    with kms(cluster, admin_creds) as admin:
        x, y = admin.create_key(alias="alias/moving"), admin.create_key()
    _, app_creds = access_point(cluster, "race", ["crypto-user"], [x.key_id])
    with kms(cluster, app_creds) as app:
        assert app.encrypt("alias/moving", b"1").key_id == x.key_id
        channel = cluster.internal_channel(cluster.shared_target)
        node = kms_pb2_grpc.KeyManagementServiceStub(channel)
        tenant = ((TENANT_METADATA_KEY, "race"),)
        node.DeleteAlias(kms_pb2.DeleteAliasRequest(alias="alias/moving"), metadata=tenant, timeout=10)
        node.CreateAlias(kms_pb2.CreateAliasRequest(alias="alias/moving", key_id=y.key_id), metadata=tenant, timeout=10)
        channel.close()
        assert app.encrypt("alias/moving", b"2").key_id == x.key_id
        with pytest.raises(PermissionDeniedError):
            app.encrypt(y.key_id, b"3")


# -- 6. request ids of reservations ---------------------------------------------------------------------


def test_a_request_id_reserves_one_key_on_one_instance(cluster):
    _, creds = access_point(cluster, "acme", ["admin"], zones=())
    stub_channel = creds.channel(cluster.zone_targets["public"])
    stub = kms_pb2_grpc.KeyManagementServiceStub(stub_channel)
    request_id = (("x-request-id", f"fixed-{uuid.uuid4().hex}"),)
    first = stub.CreateKey(kms_pb2.CreateKeyRequest(alias="alias/once", instance_id=INSTANCE), metadata=request_id,
                           timeout=30)
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateKey(kms_pb2.CreateKeyRequest(alias="alias/twice", instance_id=INSTANCE), metadata=request_id,
                       timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert first.key_metadata.key_id in caught.value.details()
    stub_channel.close()
    with kms(cluster, creds) as acme, pytest.raises(NotFoundError):
        acme.describe_key("alias/twice")


# -- the escalation search, on the real gateway ----------------------------------------------------

ROLES = ("key-admin", "access-admin", "crypto-user", "messaging-user")
PATTERNS = ("*", "alias/*", "alias/esc-a-*", "alias/esc-*", "alias/esc-a-1", "a*", "*-*")
ZONES = ("public", "vpc", "ops")


@st.composite
def starts(draw):
    return model.Spec(
        tenant="esc",
        roles=draw(st.frozensets(st.sampled_from(ROLES))) | {"access-admin"},
        patterns=tuple(draw(st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=2, unique=True))),
        zones=tuple(draw(st.lists(st.sampled_from(ZONES), max_size=2, unique=True))),
        cidrs=draw(st.sampled_from([(), ("127.0.0.0/8",), ("127.0.0.1/32",)])),
    )


@st.composite
def candidates(draw, start):
    """Access points to try to mint: mostly near the start (its own powers, narrowed or stretched
    in one or two ways), else anything."""

    def pick(own, other):
        return own if draw(st.integers(0, 3)) else draw(other)

    def narrowed(pattern: str) -> str:
        return pattern.replace("*", draw(st.sampled_from(["*", "1", "-*", "*1", "", "x*"])), 1)

    def one():
        if draw(st.integers(0, 3)):
            return model.Spec(
                tenant=pick("esc", st.just("other")),
                roles=pick(frozenset({draw(st.sampled_from(sorted(start.roles))), "access-admin"}),
                           st.frozensets(st.sampled_from(ROLES), min_size=1)),
                patterns=tuple(narrowed(p) for p in start.patterns) + pick((), st.sampled_from([("*",), ("a*",)])),
                zones=pick(start.zones, st.sampled_from([(), ("public",), ("vpc", "ops")])),
                cidrs=pick(start.cidrs, st.sampled_from([(), ("127.0.0.0/8",), ("127.0.0.1/32",)])),
                operator=pick(False, st.just(True)),
            )
        return model.Spec(
            tenant=draw(st.sampled_from(["esc", "esc", "other"])),
            roles=draw(st.frozensets(st.sampled_from(ROLES), min_size=1)),
            patterns=tuple(draw(st.lists(st.sampled_from(PATTERNS), max_size=2, unique=True))),
            zones=tuple(draw(st.sampled_from([start.zones, (), ("public",), ("vpc", "ops")]))),
            cidrs=draw(st.sampled_from([start.cidrs, (), ("127.0.0.0/8",), ("127.0.0.1/32",)])),
            operator=draw(st.sampled_from([False, False, True])),
        )

    return [one() for _ in range(draw(st.integers(4, 8)))]


@settings(max_examples=int(os.environ.get("KEYRELAY_ESCALATION_EXAMPLES", "20")), deadline=None,
          phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_what_a_credential_mints_through_the_gateway_is_never_more_than_it_has(cluster, data):
    start = data.draw(starts(), label="start")
    pool = data.draw(candidates(start), label="candidates")
    _, creds = access_point(cluster, start.tenant, sorted(start.roles), start.patterns, start.zones, start.cidrs)
    # Access points someone else made, which the start may try to issue itself credentials to.
    foreign = []
    for c in pool[:2]:
        try:
            foreign.append(access_point(cluster, c.tenant, sorted(c.roles), c.patterns, c.zones, c.cidrs, c.operator)[0])
        except InvalidArgumentError:  # a narrowed pattern that is no pattern ("a*" -> "a")
            pass
    held, frontier, gained_points = [start], [(start, creds)], []
    while frontier:
        holder, holder_creds = frontier.pop()
        zone = holder.zones[0] if holder.zones else "public"
        with cluster.admin(holder_creds, zone) as admin:
            for candidate in pool:
                try:
                    made = admin.create_access_point(candidate.tenant, "minted", sorted(candidate.roles),
                                                     candidate.patterns, candidate.zones, candidate.cidrs,
                                                     operator=candidate.operator)
                    minted = cluster.issue(made.access_point_id, admin)
                except (PermissionDeniedError, InvalidArgumentError):
                    continue
                if candidate not in held:
                    held.append(candidate)
                    frontier.append((candidate, minted))
                gained_points.append(made)
            for point in foreign:
                try:
                    cluster.issue(point.access_point_id, admin)
                except (PermissionDeniedError, NotFoundError):
                    continue
                except CredentialLimitReachedError:
                    pass  # allowed, but another holder took its last credential slot
                gained_points.append(point)
    for point in gained_points:
        gained = model.Spec(point.tenant_id, frozenset(point.roles), point.key_patterns, point.allowed_zones,
                            point.allowed_cidrs, point.operator)
        assert model.within(start, gained), (start, gained)
        assert gained.tenant == start.tenant and not gained.operator and gained.roles <= start.roles
        for pattern in gained.patterns:
            for filler in ("", "x", "-", "/", "\x00"):
                assert model.name_matches_any(start.patterns, pattern.replace("*", filler)), (start, pattern)
        for peer in ("127.0.0.1", "10.0.0.1"):
            address = ipaddress.ip_address(peer)
            if not gained.cidrs or any(address in ipaddress.ip_network(c) for c in gained.cidrs):
                assert not start.cidrs or any(address in ipaddress.ip_network(c) for c in start.cidrs)
