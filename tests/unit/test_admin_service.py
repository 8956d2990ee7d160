"""Unit tests of kms_node/admin.py (instances, access points, credentials) over its store on a real
SQLite file and a real CA in tmp_path, with a settable clock. The store itself is tested on both
engines in tests/integration/test_node_admin_store.py."""

from __future__ import annotations

import asyncio
import base64
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from fake_clock import T0, Clock
from foundation import pki
from foundation.errors import (
    AccessPointNotFoundError,
    CredentialExpiredError,
    CredentialLimitReachedError,
    CredentialNotFoundError,
    CredentialRevokedError,
    FailedPreconditionError,
    InstanceExistsError,
    InstanceNotFoundError,
    InvalidArgumentError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from foundation.access_policy import ALL_ROLES, Principal
from kms_node.admin import AdminService
from kms_node.store.admin_sql import SqlAdminStore

DAY = 86400.0
# Callers: a tenant's administrators with every role and key, and an operator.
ACME = Principal("acme", "ap-acme", "acme-admin", ALL_ROLES, ("*",))
GLOBEX = Principal("globex", "ap-globex", "globex-admin", ALL_ROLES, ("*",))
OPERATOR = Principal("operator", "ap-operator", "bootstrap-admin", ALL_ROLES, ("*",), operator=True)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return pki.CertificateAuthority.create(tmp_path_factory.mktemp("ca"), "keyrelay test CA")


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "shared.db")


@pytest.fixture
def store(db_path):
    s = SqlAdminStore(db_path)
    yield s
    s.close()


@pytest.fixture
def admin(store, ca, clock):
    svc = AdminService(store, ca, clock=clock)
    yield svc
    svc.close()


@pytest.fixture
def csr() -> bytes:
    return pki.make_key_and_csr("client")[1]


@pytest.fixture
async def point(admin):
    return await admin.create_access_point(ACME, "acme", "app", ["crypto-user"], ["alias/app-*"])


async def certificate_of(admin, point, csr, days=0):
    credential, cert_pem, ca_pem = await admin.issue_credential(ACME, point.access_point_id, csr, days)
    return credential, x509.load_pem_x509_certificate(cert_pem), ca_pem


# -- instances ----------------------------------------------------------------------------------


async def test_register_describe_and_list_instances(admin):
    """A registered instance comes back as given; listing pages in id order per scope."""
    instance = await admin.register_instance(
        OPERATOR, "acme-ded", "acme", ["10.0.0.1:7101", "node-2.example:7101", "[::1]:7101"], "10.0.0.9:7201",
        management_zones=["internal"], allow_public_crypto=True,
    )
    assert instance.node_endpoints == ("10.0.0.1:7101", "node-2.example:7101", "[::1]:7101")
    assert (instance.management_zones, instance.allow_public_crypto) == (("internal",), True)
    assert await admin.describe_instance(ACME, "acme-ded") == instance
    for n in range(3):
        await admin.register_instance(OPERATOR, f"acme-{n}", "acme", ["h:1"])
    await admin.register_instance(OPERATOR, "globex-1", "globex", ["h:1"])

    seen, token = [], ""
    while True:
        page, token = await admin.list_instances(ACME, 2, token)
        seen += [i.instance_id for i in page]
        if not token:
            break
    assert seen == ["acme-0", "acme-1", "acme-2", "acme-ded"]
    assert [i.instance_id for i in (await admin.list_instances(GLOBEX))[0]] == ["globex-1"]
    assert len((await admin.list_instances(OPERATOR))[0]) == 5


async def test_register_instance_errors(admin):
    """Bad ids, tenants, endpoints and zones are INVALID_ARGUMENT; a taken id INSTANCE_EXISTS;
    a registration by anyone but an operator key-admin PERMISSION_DENIED."""
    await admin.register_instance(OPERATOR, "taken", "acme", ["h:1"])
    with pytest.raises(InstanceExistsError):
        await admin.register_instance(OPERATOR, "taken", "globex", ["h:1"])
    bad = [
        dict(instance_id=""), dict(instance_id="-a"), dict(instance_id="a-"), dict(instance_id="Upper"),
        dict(instance_id="a" * 64), dict(instance_id="a_b"), dict(tenant_id=""), dict(tenant_id="-acme"),
        dict(node_endpoints=[]), dict(node_endpoints=["host"]), dict(node_endpoints=["host:0"]),
        dict(node_endpoints=["host:65536"]), dict(node_endpoints=[":80"]), dict(node_endpoints=["[::1:80"]),
        dict(node_endpoints=["bad host:80"]), dict(node_endpoints=["[nope]:80"]), dict(private_endpoint="x:y"),
        dict(management_zones=[""]), dict(management_zones=["Internal"]), dict(management_zones=["z" * 33]),
    ]
    for changes in bad:
        args = dict(instance_id="fresh", tenant_id="acme", node_endpoints=["h:1"], private_endpoint="")
        args.update(changes)
        zones = args.pop("management_zones", ())
        with pytest.raises(InvalidArgumentError):
            await admin.register_instance(OPERATOR, **args, management_zones=zones)
    for caller in (ACME, GLOBEX):  # even for its own tenant: instance ids are global
        with pytest.raises(PermissionDeniedError, match="operators only"):
            await admin.register_instance(caller, "fresh", caller.tenant_id, ["h:1"], allow_public_crypto=True)
    no_key_admin = Principal("operator", "ap-2", "op-access", frozenset({"access-admin"}), ("*",), operator=True)
    with pytest.raises(PermissionDeniedError, match="key-admin"):
        await admin.register_instance(no_key_admin, "fresh", "acme", ["h:1"])
    assert (await admin.list_instances(OPERATOR))[0][0].instance_id == "taken"


async def test_instances_of_other_tenants_are_not_found(admin):
    """A tenant cannot see another tenant's instance; the operator sees every one."""
    await admin.register_instance(OPERATOR, "globex-ded", "globex", ["h:1"])
    with pytest.raises(InstanceNotFoundError):
        await admin.describe_instance(ACME, "globex-ded")
    with pytest.raises(InstanceNotFoundError):
        await admin.describe_instance(ACME, "missing")
    assert (await admin.describe_instance(OPERATOR, "globex-ded")).tenant_id == "globex"
    assert (await admin.list_instances(ACME))[0] == []


@pytest.mark.parametrize("token", ["garbage!", "WzFd", "W10=", "bnVsbA=="])
async def test_bad_page_tokens(admin, token):
    """Tokens the service did not issue are INVALID_ARGUMENT."""
    with pytest.raises(InvalidArgumentError, match="page_token"):
        await admin.list_instances(ACME, 0, token)
    with pytest.raises(InvalidArgumentError, match="page_token"):
        await admin.list_access_points(ACME, "acme", 0, token)


# -- access points --------------------------------------------------------------------------------


async def test_create_access_point(admin, point):
    """An access point records its role, patterns, zones and normalised CIDRs."""
    full = await admin.create_access_point(
        ACME, "acme", "ops", ["admin"], ["*", "alias/a", "3f2c*", "0b7e8a62-6c41-4a43-9d7b-4c8e2b1f0a11"],
        ["internal", "internal"], ["10.1.2.3/8", "2001:db8::1/32"],
    )
    assert full.allowed_cidrs == ("10.0.0.0/8", "2001:db8::/32")
    assert full.allowed_zones == ("internal",)
    assert await admin.describe_access_point(ACME, full.access_point_id) == full
    assert full.roles == ALL_ROLES and not full.operator
    assert (point.roles, point.key_patterns, point.allowed_zones, point.allowed_cidrs) == (
        frozenset({"crypto-user"}), ("alias/app-*",), (), ()
    )


async def test_create_access_point_errors(admin):
    """Missing tenant, name or role, malformed patterns, zones or CIDRs: INVALID_ARGUMENT;
    another tenant: PERMISSION_DENIED."""
    bad = [
        dict(tenant_id=""), dict(name=""), dict(name="x" * 129), dict(roles=[]), dict(roles=["root"]),
        dict(roles=[""]),
        dict(key_patterns=["key-1"]), dict(key_patterns=["alias/"]), dict(key_patterns=["ALIAS/x"]),
        dict(key_patterns=[""]), dict(key_patterns=["0B7E8A62-6C41-4A43-9D7B-4C8E2B1F0A11"]),
        dict(allowed_zones=["bad zone"]), dict(allowed_cidrs=["10.0.0.0/33"]), dict(allowed_cidrs=["nope"]),
    ]
    for changes in bad:
        args = dict(tenant_id="acme", name="n", roles=["admin"])
        args.update(changes)
        with pytest.raises(InvalidArgumentError):
            await admin.create_access_point(ACME, **args)
    with pytest.raises(PermissionDeniedError, match="globex"):
        await admin.create_access_point(ACME, "globex", "n", ["admin"])


async def test_access_points_are_scoped_to_their_tenant(admin, point):
    """Another tenant gets ACCESS_POINT_NOT_FOUND for every call on it, and PERMISSION_DENIED
    listing the tenant."""
    calls = [
        lambda: admin.describe_access_point(GLOBEX, point.access_point_id),
        lambda: admin.delete_access_point(GLOBEX, point.access_point_id),
        lambda: admin.list_credentials(GLOBEX, point.access_point_id),
        lambda: admin.issue_credential(GLOBEX, point.access_point_id, pki.make_key_and_csr()[1]),
    ]
    for call in calls:
        with pytest.raises(AccessPointNotFoundError):
            await call()
    with pytest.raises(PermissionDeniedError):
        await admin.list_access_points(GLOBEX, "acme")
    assert (await admin.describe_access_point(OPERATOR, point.access_point_id)) == point
    assert (await admin.list_access_points(GLOBEX, "globex"))[0] == []


async def test_list_access_points_pages(admin):
    """Access points list oldest first, page by page."""
    created = [(await admin.create_access_point(ACME, "acme", f"ap{n}", ["admin"])).access_point_id for n in range(5)]
    await admin.create_access_point(OPERATOR, "globex", "other", ["admin"])
    seen, token = [], ""
    while True:
        page, token = await admin.list_access_points(ACME, "acme", 2, token)
        seen += [p.access_point_id for p in page]
        if not token:
            break
    assert seen == created
    with pytest.raises(InvalidArgumentError):
        await admin.list_access_points(ACME, "")


# -- credentials ----------------------------------------------------------------------------------


async def test_issue_credential(admin, point, csr, ca):
    """The certificate names the access point and tenant, is signed by the CA, and the record
    matches it; 0 days means 90."""
    credential, cert, ca_pem = await certificate_of(admin, point, csr)
    assert ca_pem == ca.certificate_pem
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"ap:{point.access_point_id}"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "acme"
    cert.verify_directly_issued_by(ca.certificate)
    assert credential.serial == pki.serial_hex(cert)
    assert credential.fingerprint_sha256 == pki.fingerprint_sha256(cert)
    assert credential.not_after - credential.not_before == pytest.approx(90 * DAY)
    assert credential.not_before == pytest.approx(T0 - 300, abs=1)  # a little early, for clock skew
    assert not credential.revoked and credential.revoke_time is None
    year, _, _ = await certificate_of(admin, point, pki.make_key_and_csr()[1], 365)
    assert year.not_after - year.not_before == pytest.approx(365 * DAY)


async def test_issue_credential_errors(admin, point, csr, store, clock):
    """Validity out of range and bad CSRs: INVALID_ARGUMENT; unknown access point: NOT_FOUND;
    no CA: FAILED_PRECONDITION."""
    for days in (366, 1000):
        with pytest.raises(InvalidArgumentError, match="validity_days"):
            await admin.issue_credential(ACME, point.access_point_id, csr, days)
    request = x509.load_pem_x509_csr(csr)
    der = request.public_bytes(serialization.Encoding.DER).replace(b"client", b"clienu")
    forged = b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(der) + b"-----END CERTIFICATE REQUEST-----\n"
    weak_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    weak = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weak")])
    ).sign(weak_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    for bad, reason in ((b"", "PEM"), (b"not a csr", "PEM"), (forged, "signature"), (weak, "not supported")):
        with pytest.raises(InvalidArgumentError, match=reason):
            await admin.issue_credential(ACME, point.access_point_id, bad)
    with pytest.raises(AccessPointNotFoundError):
        await admin.issue_credential(ACME, "missing", csr)
    without_ca = AdminService(store, None, clock=clock)
    try:
        with pytest.raises(FailedPreconditionError, match="no CA configured"):
            await without_ca.issue_credential(ACME, point.access_point_id, csr)
    finally:
        without_ca.close()
    assert await admin.list_credentials(ACME, point.access_point_id) == []


async def test_three_live_credentials_at_most(admin, point, clock):
    """A fourth live credential is refused; revoking one, or one expiring, frees a slot."""
    issued = [await certificate_of(admin, point, pki.make_key_and_csr()[1]) for _ in range(2)]
    short, _, _ = await certificate_of(admin, point, pki.make_key_and_csr()[1], 1)
    with pytest.raises(CredentialLimitReachedError, match="revoke one"):
        await admin.issue_credential(ACME, point.access_point_id, pki.make_key_and_csr()[1])
    await admin.revoke_credential(ACME, issued[0][0].serial)
    await certificate_of(admin, point, pki.make_key_and_csr()[1])
    with pytest.raises(CredentialLimitReachedError):
        await admin.issue_credential(ACME, point.access_point_id, pki.make_key_and_csr()[1])
    clock.now += 2 * DAY  # the 1-day credential has expired
    await certificate_of(admin, point, pki.make_key_and_csr()[1])
    everything = await admin.list_credentials(ACME, point.access_point_id)
    assert len(everything) == 5  # revoked and expired ones are still listed
    assert {c.serial for c in everything if c.live(clock.now)} == {c.serial for c in everything} - {
        issued[0][0].serial, short.serial
    }


async def test_credential_limit_holds_under_concurrency(admin, point):
    """Issuing many credentials at once still leaves exactly three."""
    csrs = [pki.make_key_and_csr()[1] for _ in range(8)]
    outcomes = await asyncio.gather(
        *(admin.issue_credential(ACME, point.access_point_id, c) for c in csrs), return_exceptions=True
    )
    assert sum(not isinstance(o, Exception) for o in outcomes) == 3
    assert all(isinstance(o, CredentialLimitReachedError) for o in outcomes if isinstance(o, Exception))
    assert len(await admin.list_credentials(ACME, point.access_point_id)) == 3


async def test_revoke_credential(admin, point, csr, clock):
    """Revoking sets revoke_time; revoking again keeps the first; unknown or other tenants'
    serials are CREDENTIAL_NOT_FOUND."""
    credential, _, _ = await certificate_of(admin, point, csr)
    with pytest.raises(CredentialNotFoundError):
        await admin.revoke_credential(GLOBEX, credential.serial)
    with pytest.raises(CredentialNotFoundError):
        await admin.revoke_credential(ACME, "abc123")
    first = await admin.revoke_credential(ACME, credential.serial.upper())
    assert first.revoked and first.revoke_time == pytest.approx(clock.now)
    clock.now += 100
    again = await admin.revoke_credential(OPERATOR, credential.serial)
    assert again.revoke_time == first.revoke_time


# -- authentication -----------------------------------------------------------------------------


async def test_authenticate(admin, point, csr):
    """The issued certificate's serial and fingerprint authenticate as its access point."""
    credential, cert, _ = await certificate_of(admin, point, csr)
    found, access_point = await admin.authenticate(pki.serial_hex(cert), pki.fingerprint_sha256(cert))
    assert (found, access_point) == (credential, point)
    assert (await admin.authenticate(credential.serial.upper(), credential.fingerprint_sha256.upper()))[1] == point


async def test_authenticate_refusals(admin, point, csr, clock):
    """Unknown serial or wrong fingerprint: UNAUTHENTICATED; revoked: CREDENTIAL_REVOKED;
    expired: CREDENTIAL_EXPIRED; deleted access point: CREDENTIAL_REVOKED."""
    credential, _, _ = await certificate_of(admin, point, csr, 1)
    for serial, fingerprint in (("", ""), ("abc", credential.fingerprint_sha256), (credential.serial, "00" * 32)):
        with pytest.raises(UnauthenticatedError) as caught:
            await admin.authenticate(serial, fingerprint)
        assert type(caught.value) is UnauthenticatedError
    clock.now += 2 * DAY
    with pytest.raises(CredentialExpiredError):
        await admin.authenticate(credential.serial, credential.fingerprint_sha256)

    other, _, _ = await certificate_of(admin, point, pki.make_key_and_csr()[1])
    await admin.revoke_credential(ACME, other.serial)
    with pytest.raises(CredentialRevokedError):
        await admin.authenticate(other.serial, other.fingerprint_sha256)

    third, _, _ = await certificate_of(admin, point, pki.make_key_and_csr()[1])
    await admin.authenticate(third.serial, third.fingerprint_sha256)
    await admin.delete_access_point(ACME, point.access_point_id)
    with pytest.raises(CredentialRevokedError):
        await admin.authenticate(third.serial, third.fingerprint_sha256)


async def test_delete_access_point_revokes_its_credentials(admin, point, csr, store, clock):
    """Deleting revokes every credential at once and removes the access point."""
    credential, _, _ = await certificate_of(admin, point, csr)
    await admin.delete_access_point(ACME, point.access_point_id)
    revoked = store.get_credential(credential.serial)
    assert revoked.revoked and revoked.revoke_time == pytest.approx(clock.now)
    with pytest.raises(AccessPointNotFoundError):
        await admin.describe_access_point(ACME, point.access_point_id)
    with pytest.raises(AccessPointNotFoundError):
        await admin.delete_access_point(ACME, point.access_point_id)
    with pytest.raises(AccessPointNotFoundError):
        await admin.list_credentials(ACME, point.access_point_id)


# -- bootstrap --------------------------------------------------------------------------------------


async def test_bootstrap_admin_once(admin, tmp_path, ca):
    """The first start writes an operator admin credential (key 0600) that authenticates; later
    starts write nothing."""
    directory = tmp_path / "bootstrap"
    assert await admin.bootstrap_admin(directory) == directory
    key_file, cert_file = directory / "bootstrap-admin.key", directory / "bootstrap-admin.crt"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert (directory / "ca.crt").read_bytes() == ca.certificate_pem
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    credential, access_point = await admin.authenticate(pki.serial_hex(cert), pki.fingerprint_sha256(cert))
    assert (access_point.tenant_id, access_point.name, access_point.roles) == ("operator", "bootstrap-admin", ALL_ROLES)
    assert access_point.operator
    assert (access_point.key_patterns, access_point.allowed_zones, access_point.allowed_cidrs) == (("*",), (), ())
    assert credential.not_after - credential.not_before == pytest.approx(365 * DAY)

    key_file.unlink()
    assert await admin.bootstrap_admin(directory) is None
    assert not key_file.exists()
    assert len((await admin.list_access_points(OPERATOR, "operator"))[0]) == 1


async def test_bootstrap_admin_without_ca(store, clock, tmp_path):
    """Without a CA there is nothing to sign the bootstrap credential with."""
    admin = AdminService(store, None, clock=clock)
    try:
        with pytest.raises(FailedPreconditionError):
            await admin.bootstrap_admin(tmp_path / "b")
    finally:
        admin.close()
