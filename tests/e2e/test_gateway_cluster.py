"""The gateway in front of real processes: two shared KMS replicas, one dedicated node, one gateway.

One cluster serves the whole module (starting it takes a while); tests that break something
(killing a replica) come last. Everything goes through the SDK with access-point credentials,
as a user's application would.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import subprocess
import threading
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import grpc
import pytest

from client_sdk import AdminClient, AsyncKmsClient, KmsClient
from client_sdk.credentials import CredentialBundle, write_profile
from foundation.errors import (
    AliasExistsError,
    AliasNotFoundError,
    CredentialLimitReachedError,
    InvalidArgumentError,
    KeyNotFoundError,
    KeyrelayError,
    NetworkNotAllowedError,
    PermissionDeniedError,
    PrivateEndpointRequiredError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from foundation.pki import CertificateAuthority, certificate_pem, make_key_and_csr, write_credential
from kms_gateway.devcluster import DevCluster
from kms_node import devsetup

INSTANCE = "dev-dedicated"


class Tenant:
    """Credentials of one tenant's access points, as files, and clients made from them."""

    def __init__(self, cluster: DevCluster, admin: AdminClient, tenant: str, root: Path) -> None:
        self.cluster = cluster
        self.name = tenant
        self.root = root
        self.bundles: dict[str, CredentialBundle] = {}
        self.access_points: dict[str, str] = {}
        for role in ("admin", "crypto-user"):
            point = admin.create_access_point(tenant, f"{tenant}-{role}", role, key_patterns=["*"])
            self.access_points[role] = point.access_point_id
            self.bundles[role] = self.issue(admin, point.access_point_id)

    def issue(self, admin: AdminClient, access_point_id: str) -> CredentialBundle:
        issued = admin.issue_credential(access_point_id)
        return CredentialBundle(issued.ca_certificate_pem, issued.certificate_pem, issued.private_key_pem)

    def kms(self, role: str = "admin", zone: str = "vpc", target: str | None = None) -> KmsClient:
        return KmsClient(target or self.cluster.zone_target(zone), credentials=self.bundles[role], timeout=20)

    def profile(self, name: str, role: str, endpoint: str, private_endpoints: dict[str, str] | None = None) -> Path:
        """A profile file (and its credential files) as a user of this access point would have."""
        bundle = self.bundles[role]
        folder = self.root / name
        paths = write_credential(folder, role, bundle.client_cert, bundle.client_key, bundle.ca_cert)
        return write_profile(folder / "profile.toml", endpoint, paths["ca"], paths["cert"], paths["key"], private_endpoints)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, e2e_tools):
    cluster = DevCluster(tmp_path_factory.mktemp("cluster")).prepare()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        cluster.kill_all()


@pytest.fixture(scope="module")
def operator(cluster):
    files = cluster.admin_credentials()
    bundle = CredentialBundle.from_files(files["ca"], files["cert"], files["key"])
    with AdminClient(cluster.zone_target("vpc"), credentials=bundle, timeout=20) as admin:
        yield admin


@pytest.fixture(scope="module")
def acme(cluster, operator, tmp_path_factory):
    operator.register_instance(
        INSTANCE, "acme", [cluster.dedicated_internal], cluster.private_endpoint, management_zones=["vpc"]
    )
    return Tenant(cluster, operator, "acme", tmp_path_factory.mktemp("acme"))


@pytest.fixture(scope="module")
def globex(cluster, operator, tmp_path_factory):
    return Tenant(cluster, operator, "globex", tmp_path_factory.mktemp("globex"))


@pytest.fixture(scope="module")
def keys(acme):
    with acme.kms() as kms:
        shared = kms.create_key(description="shared key", alias="alias/orders")
        dedicated = kms.create_key(description="dedicated key", alias="alias/payroll", instance_id=INSTANCE)
    return shared, dedicated


def _metric(port: int, operation: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("keyrelay_requests_total{") and f'operation="{operation}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _metrics_port(config: Path) -> int:
    for line in config.read_text().splitlines():
        if line.startswith("metrics_listen"):
            return int(line.split(":")[-1].strip().strip('"'))
    raise AssertionError(f"{config} has no metrics_listen")


def test_keys_of_both_kinds_reach_the_right_node(cluster, acme, keys):
    """Claims 1, 4, 5: a shared key is made by the shared pool, a dedicated one by its instance only."""
    shared, dedicated = keys
    assert shared.instance_id == "" and dedicated.instance_id == INSTANCE
    assert dedicated.state == "ENABLED" and dedicated.aliases == ("alias/payroll",)
    shared_creates = sum(_metric(_metrics_port(cluster.daemons[n].config), "CreateKey") for n in ("shared-1", "shared-2"))
    dedicated_creates = _metric(_metrics_port(cluster.daemons["dedicated"].config), "CreateKey")
    assert shared_creates == 1 and dedicated_creates == 1

    # The dedicated key's material (its wrapped CMK versions) is only in the dedicated store.
    with sqlite3.connect(cluster.root / "dedicated.db") as db:
        assert db.execute("SELECT count(*) FROM key_versions WHERE key_id = ?", (dedicated.key_id,)).fetchone()[0] == 1
        assert db.execute("SELECT count(*) FROM keys WHERE key_id = ?", (shared.key_id,)).fetchone()[0] == 0
    with sqlite3.connect(cluster.root / "shared.db") as db:
        assert db.execute("SELECT count(*) FROM key_versions WHERE key_id = ?", (dedicated.key_id,)).fetchone()[0] == 0
        row = db.execute("SELECT instance_id, state FROM keys WHERE key_id = ?", (dedicated.key_id,)).fetchone()
        assert row == (INSTANCE, "ENABLED")  # the registry record only

    # Describe and rotate through the gateway route to the instance, which answers with its versions.
    with acme.kms() as kms:
        assert kms.describe_key("alias/payroll").versions == (1,)
        kms.rotate_key(dedicated.key_id)
        assert kms.describe_key(dedicated.key_id).versions == (1, 2)
        listed = {k.key_id: k.instance_id for k in kms.list_keys().keys}
    assert listed == {shared.key_id: "", dedicated.key_id: INSTANCE}
    # The dedicated key wraps under its own pool's domain key: the private endpoint decrypts.
    with acme.kms("crypto-user", target=cluster.private_endpoint) as private:
        blob = private.encrypt("alias/payroll", b"salary", context={"who": "bob"}).ciphertext_blob
        assert private.decrypt(blob, context={"who": "bob"}).plaintext == b"salary"


def test_another_tenant_cannot_see_or_use_the_keys(acme, globex, keys):
    shared, dedicated = keys
    with acme.kms("crypto-user") as kms:
        blob = kms.encrypt(shared.key_id, b"acme data").ciphertext_blob
    with globex.kms() as admin, globex.kms("crypto-user") as crypto:
        for key in (shared, dedicated):
            with pytest.raises(KeyNotFoundError):
                admin.describe_key(key.key_id)
            with pytest.raises(KeyNotFoundError):
                admin.rotate_key(key.key_id)
            with pytest.raises(KeyNotFoundError):
                crypto.encrypt(key.key_id, b"x")
        with pytest.raises(KeyNotFoundError):
            crypto.decrypt(blob)
        assert list(admin.list_keys().keys) == []
    with globex.kms("crypto-user", target=acme.cluster.private_endpoint) as private:
        # The instance is acme's: another tenant's credential gets nothing there, not even random bytes.
        for call in (lambda: private.encrypt(dedicated.key_id, b"x"), lambda: private.generate_random(16)):
            with pytest.raises(PermissionDeniedError, match="does not own dedicated instance"):
                call()


def _crypto_round_trip(kms: KmsClient, key: str) -> None:
    """What an application does with a key, whichever KMS holds it."""
    blob = kms.encrypt(key, b"invoice 42", context={"tenant": "acme"}).ciphertext_blob
    assert kms.decrypt(blob, context={"tenant": "acme"}).plaintext == b"invoice 42"
    data_key = kms.generate_data_key(key, context={"file": "a.csv"})
    assert kms.decrypt(data_key.ciphertext_blob, context={"file": "a.csv"}).plaintext == data_key.plaintext
    [item] = kms.batch_decrypt([(blob, {"tenant": "acme"})])
    assert item.ok and item.value.plaintext == b"invoice 42"


def test_the_same_client_code_runs_on_the_gateway_and_on_a_private_endpoint(cluster, acme, keys):
    """One SDK for both kinds of key (seed 001 §0004): two profiles, the same code."""
    shared, dedicated = keys
    gateway = acme.profile("gateway-profile", "crypto-user", cluster.zone_target("vpc"))
    private = acme.profile("private-profile", "crypto-user", cluster.private_endpoint)
    for profile, key in ((gateway, shared.key_id), (private, dedicated.key_id)):
        with KmsClient(profile=profile) as kms:
            _crypto_round_trip(kms, key)


def test_one_profile_sends_crypto_on_dedicated_keys_to_the_private_endpoint(cluster, acme, keys):
    shared, dedicated = keys
    profile = acme.profile(
        "routing-profile", "crypto-user", cluster.zone_target("vpc"), {INSTANCE: cluster.private_endpoint}
    )
    dedicated_port = _metrics_port(cluster.daemons["dedicated"].config)
    before = _metric(dedicated_port, "Encrypt")
    with KmsClient(profile=profile) as kms:
        assert kms.private_endpoints == {INSTANCE: cluster.private_endpoint}
        for key in (shared.key_id, "alias/payroll"):
            _crypto_round_trip(kms, key)
        # Blobs of both kinds of key in one batch: split by instance, merged in order.
        blobs = [kms.encrypt(k, b"%d" % i).ciphertext_blob for i, k in enumerate([shared.key_id, dedicated.key_id] * 2)]
        assert [item.value.plaintext for item in kms.batch_decrypt(blobs)] == [b"0", b"1", b"2", b"3"]
    assert _metric(dedicated_port, "Encrypt") == before + 3  # the dedicated key's encryptions reached the instance


async def test_async_client_routes_the_same_way(cluster, acme, keys):
    shared, dedicated = keys
    profile = acme.profile(
        "async-profile", "crypto-user", cluster.zone_target("vpc"), {INSTANCE: cluster.private_endpoint}
    )
    async with AsyncKmsClient(profile=profile) as kms:
        results = await asyncio.gather(*(kms.encrypt(k, b"async") for k in (shared.key_id, dedicated.key_id)))
        plaintexts = await asyncio.gather(*(kms.decrypt(r.ciphertext_blob) for r in results))
    assert [p.plaintext for p in plaintexts] == [b"async", b"async"]
    assert [r.key_id for r in results] == [shared.key_id, dedicated.key_id]


def test_claim_3_network_policy_and_private_endpoint(cluster, acme, keys):
    _, dedicated = keys
    with acme.kms(zone="vpc") as kms:
        kms.disable_key(dedicated.key_id)
        kms.enable_key(dedicated.key_id)
    with acme.kms(zone="public") as kms:
        with pytest.raises(NetworkNotAllowedError, match="vpc"):
            kms.disable_key(dedicated.key_id)
    with acme.kms("crypto-user", zone="public") as kms:
        with pytest.raises(PrivateEndpointRequiredError) as refused:
            kms.encrypt(dedicated.key_id, b"x")
        assert cluster.private_endpoint in str(refused.value)
    with acme.kms("crypto-user", target=cluster.private_endpoint) as private:
        blob = private.encrypt(dedicated.key_id, b"payload").ciphertext_blob
        assert private.decrypt(blob).plaintext == b"payload"
        with pytest.raises(PermissionDeniedError, match="gateway"):
            private.rotate_key(dedicated.key_id)
    with acme.kms("crypto-user", zone="public") as kms:
        with pytest.raises(PrivateEndpointRequiredError):
            kms.decrypt(blob)


def test_revoked_expired_and_fourth_credentials_are_refused(cluster, operator, acme, keys):
    shared, dedicated = keys
    point = operator.create_access_point("acme", "acme-short-lived", "crypto-user", key_patterns=["*"])
    bundles = [acme.issue(operator, point.access_point_id) for _ in range(3)]
    with pytest.raises(CredentialLimitReachedError):
        operator.issue_credential(point.access_point_id)
    serial = operator.list_credentials(point.access_point_id)[0].serial
    first = next(b for b in bundles if serial in _serial_of(b))
    with KmsClient(cluster.zone_target("vpc"), credentials=first, timeout=20) as kms:
        kms.encrypt(shared.key_id, b"ok before revocation")
    operator.revoke_credential(serial)
    with KmsClient(cluster.zone_target("vpc"), credentials=first, timeout=20) as kms:
        with pytest.raises(UnauthenticatedError):
            kms.encrypt(shared.key_id, b"x")
    time.sleep(1.5)  # the private endpoint trusts a checked credential for 1 s (credential_cache_seconds)
    with KmsClient(cluster.private_endpoint, credentials=first, timeout=20) as private:
        with pytest.raises(UnauthenticatedError):
            private.encrypt(dedicated.key_id, b"x")
    # Revoking freed a slot: a new credential can be issued.
    acme.issue(operator, point.access_point_id)

    # A certificate past its expiry is refused (by the TLS handshake, before any call is served).
    ca = CertificateAuthority.load(cluster.kms_ca, cluster.pki / "kms-ca" / "ca.key")
    key_pem, csr_pem = make_key_and_csr()
    expired = ca.sign_csr(
        csr_pem, common_name=f"ap:{point.access_point_id}", organization="acme", validity_days=1,
        not_before=datetime.now(timezone.utc) - timedelta(days=3),
    )
    bundle = CredentialBundle(ca.certificate_pem, certificate_pem(expired), key_pem)
    for target in (cluster.zone_target("vpc"), cluster.private_endpoint):
        with KmsClient(target, credentials=bundle, timeout=10) as kms:
            with pytest.raises(KeyrelayError) as refused:
                kms.encrypt(shared.key_id, b"x")
            assert refused.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)
            assert "unexpired" in refused.value.message or refused.value.reason == "CREDENTIAL_EXPIRED"


def _serial_of(bundle: CredentialBundle) -> str:
    from foundation.pki import load_certificate, serial_hex

    return serial_hex(load_certificate(bundle.client_cert))


def test_aliases_and_batches_across_the_shared_pool_and_an_instance(cluster, acme, keys):
    shared, dedicated = keys
    with acme.kms() as kms:
        # An alias of a dedicated key is recorded in the registry: it resolves through the gateway.
        kms.create_alias("alias/payroll-2", dedicated.key_id)
        assert kms.describe_key("alias/payroll-2").key_id == dedicated.key_id
        # One alias namespace per tenant across the shared pool and its instances.
        with pytest.raises(AliasExistsError):
            kms.create_alias("alias/orders", dedicated.key_id)
        assert "alias/orders" not in kms.describe_key(dedicated.key_id).aliases
        assert kms.delete_alias("alias/payroll-2") == dedicated.key_id
        with pytest.raises(AliasNotFoundError):
            kms.describe_key("alias/payroll-2")
    with acme.kms("crypto-user", target=cluster.private_endpoint) as private:
        dedicated_blob = private.encrypt(dedicated.key_id, b"d").ciphertext_blob
    with acme.kms("crypto-user") as kms:
        shared_blob = kms.encrypt(shared.key_id, b"s").ciphertext_blob
        results = kms.batch_decrypt([shared_blob, dedicated_blob, shared_blob, b"\x01 not a blob"])
        assert [r.value.plaintext if r.value else None for r in results] == [b"s", None, b"s", None]
        assert isinstance(results[1].error, PrivateEndpointRequiredError)
        assert results[3].error is not None
        with pytest.raises(InvalidArgumentError, match="within one KMS"):
            kms.re_encrypt(shared_blob, dedicated.key_id)


def test_a_node_internal_port_serves_only_the_gateway(cluster, acme, keys):
    certs = cluster.pki / "certs"
    shared_node = cluster.shared_endpoints[1]
    # Another node's internal certificate: right CA, wrong identity.
    node_bundle = CredentialBundle.from_files(
        cluster.internal_ca, certs / f"keyrelay-node-{INSTANCE}.crt", certs / f"keyrelay-node-{INSTANCE}.key"
    )
    with KmsClient(shared_node, credentials=node_bundle, tenant="acme", timeout=10) as kms:
        with pytest.raises(PermissionDeniedError, match="only the gateway"):
            kms.describe_key(keys[0].key_id)
    # A tenant's access-point credential is not from the internal CA: TLS refuses it.
    with KmsClient(shared_node, credentials=CredentialBundle(
        cluster.internal_ca.read_bytes(), acme.bundles["admin"].client_cert, acme.bundles["admin"].client_key
    ), timeout=10) as kms:
        with pytest.raises(KeyrelayError) as refused:
            kms.describe_key(keys[0].key_id)
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE


def test_a_crypto_user_cannot_manage_keys(acme, keys):
    shared, _ = keys
    with acme.kms("crypto-user") as kms:
        with pytest.raises(PermissionDeniedError, match="admin"):
            kms.disable_key(shared.key_id)


def test_audit_log_verifies_and_catches_tampering(cluster, acme, keys, tmp_path):
    with acme.kms("crypto-user") as kms:
        kms.encrypt(keys[0].key_id, b"one more audited call")
    command = [*devsetup.keyrelay_command(), "audit", "verify"]
    done = subprocess.run([*command, str(cluster.audit_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = cluster.audit_path.read_bytes().splitlines(keepends=True)
    assert len(lines) >= 10
    assert b"one more audited call" not in cluster.audit_path.read_bytes()

    flipped = bytearray(lines[4])
    flipped[20] ^= 0x01
    variants = {
        "byte": lines[:4] + [bytes(flipped)] + lines[5:],
        "delete": lines[:4] + lines[5:],
        "swap": lines[:4] + [lines[5], lines[4]] + lines[6:],
    }
    for name, content in variants.items():
        copy = tmp_path / f"audit-{name}.log"
        copy.write_bytes(b"".join(content))
        done = subprocess.run([*command, str(copy)], capture_output=True, text=True, timeout=60)
        assert done.returncode != 0, name
        assert "line 5" in done.stderr, (name, done.stderr)


def test_a_failed_dedicated_create_leaves_no_key_and_a_retry_succeeds(cluster, acme, keys):
    """CreateKey on an instance that is down: no usable or listed half-made key, alias free again."""
    cluster.stop("dedicated")
    try:
        with acme.kms() as kms:
            with pytest.raises(UnavailableError):
                kms.create_key(alias="alias/retry-me", instance_id=INSTANCE, timeout=5)
            with pytest.raises(AliasNotFoundError):
                kms.describe_key("alias/retry-me")
            assert "alias/retry-me" not in {a for k in kms.list_keys().keys for a in k.aliases}
    finally:
        cluster.start("dedicated")
    with acme.kms() as kms:
        created = kms.create_key(alias="alias/retry-me", instance_id=INSTANCE)
        assert created.state == "ENABLED" and kms.describe_key("alias/retry-me").key_id == created.key_id
    with acme.kms("crypto-user", target=cluster.private_endpoint) as private:
        assert private.decrypt(private.encrypt("alias/retry-me", b"made").ciphertext_blob).plaintext == b"made"


def test_a_tenant_over_its_rate_limit_is_told_to_slow_down(cluster, acme, keys):
    limited = {"public": devsetup.free_port()}
    cluster.add_gateway(
        "gateway-limited", limited, cluster.root / "audit-limited.log",
        "[rate_limit]\nrequests_per_second = 1\nburst = 3\n",
    )
    cluster.start("gateway-limited")
    try:
        with acme.kms("crypto-user", target=f"127.0.0.1:{limited['public']}") as kms:
            outcomes = []
            for _ in range(8):
                try:
                    kms.encrypt(keys[0].key_id, b"x")
                    outcomes.append("ok")
                except ResourceExhaustedError as exc:
                    assert "rate limit" in exc.message and "retry in" in exc.message
                    outcomes.append("limited")
        assert outcomes.count("ok") >= 3 and "limited" in outcomes
    finally:
        cluster.stop("gateway-limited")


def test_nodes_report_hsm_timings(cluster, keys):
    port = _metrics_port(cluster.daemons["dedicated"].config)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'keyrelay_hsm_operation_seconds_count{operation="CreateKey"}' in text


def test_killing_a_shared_replica_loses_no_call(cluster, acme, keys):
    """Claim 4 of the issue: 1000 Decrypts through the gateway while one shared replica is SIGKILLed."""
    shared, _ = keys
    with acme.kms("crypto-user") as kms:
        blob = kms.encrypt(shared.key_id, b"survives", context={"k": "v"}).ciphertext_blob
        failures: list[Exception] = []
        done = 0

        def killer() -> None:
            while done < 200:
                time.sleep(0.01)
            cluster.daemons["shared-1"].process.proc.kill()

        thread = threading.Thread(target=killer)
        thread.start()
        for _ in range(1000):
            try:
                assert kms.decrypt(blob, context={"k": "v"}).plaintext == b"survives"
            except Exception as exc:  # noqa: BLE001 - every failure counts
                failures.append(exc)
            done += 1
        thread.join()
    assert cluster.daemons["shared-1"].process.proc.poll() is not None
    assert failures == []
