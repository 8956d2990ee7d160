"""KeyRegistryService, AccessRegistryService and AdminService on the wire: a real in-process
grpc.aio server on a loopback port with the node's servicers and the error-mapping interceptor,
called through the generated stubs. Checks statuses, reasons (`keyrelay-error-reason`) and the
protobuf forms of the records."""

from __future__ import annotations

import contextlib
import uuid

import grpc
import pytest
from cryptography import x509

from foundation import pki
from foundation.access_policy import ALL_ROLES
from foundation.errors import REASON_METADATA_KEY
from foundation.grpc_server import new_server
from keyrelay.v1 import admin_pb2, admin_pb2_grpc, kms_pb2, registry_pb2, registry_pb2_grpc
from kms_node.admin import AdminService
from kms_node.admin_servicer import AdminServicer
from kms_node.registry import KeyRegistry
from kms_node.registry_servicer import AccessRegistryServicer, KeyRegistryServicer
from kms_node.store.admin_base import AccessPoint
from kms_node.store.admin_sql import SqlAdminStore
from kms_node.store.base import KeyRecord, KeyState, VersionRecord
from kms_node.store.sql import SqlKeyStore

# The calling access points, as the gateway names them (`keyrelay-access-point`); `serving` puts
# them in the store: an operator, and an administrator (every role, every key) of acme and globex.
CALLERS = {"ap-operator": ("operator", True), "ap-acme": ("acme", False), "ap-globex": ("globex", False)}
OPERATOR, ACME, GLOBEX = ((("keyrelay-access-point", ap_id),) for ap_id in CALLERS)


class Node:
    """The shared node's registry and admin services behind one server, and stubs to call it."""

    def __init__(self, keys, admin_store, ca, *, ready: bool = True) -> None:
        self.keys = keys
        self.registry = KeyRegistry(keys, admin_store)
        self.admin = AdminService(admin_store, ca)
        self.server = new_server()
        self.registry_servicer = KeyRegistryServicer(self.registry if ready else None)
        registry_pb2_grpc.add_KeyRegistryServiceServicer_to_server(self.registry_servicer, self.server)
        registry_pb2_grpc.add_AccessRegistryServiceServicer_to_server(AccessRegistryServicer(self.admin), self.server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(self.admin), self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.key_registry = registry_pb2_grpc.KeyRegistryServiceStub(self.channel)
        self.access = registry_pb2_grpc.AccessRegistryServiceStub(self.channel)
        self.stub = admin_pb2_grpc.AdminServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()
        await self.server.stop(None)
        self.registry.close()
        self.admin.close()


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return pki.CertificateAuthority.create(tmp_path_factory.mktemp("ca"), "keyrelay test CA")


@contextlib.asynccontextmanager
async def serving(path: str, ca, *, ready: bool = True):
    """A started Node on a fresh store file, stopped and closed afterwards."""
    keys, admin_store = SqlKeyStore(path), SqlAdminStore(path)
    for ap_id, (tenant, operator) in CALLERS.items():
        if admin_store.get_access_point(ap_id) is None:
            admin_store.add_access_point(AccessPoint(ap_id, tenant, ap_id, ALL_ROLES, ("*",), (), (), 1.0, operator))
    served = Node(keys, admin_store, ca, ready=ready)
    await served.server.start()
    try:
        yield served
    finally:
        await served.close()
        keys.close()
        admin_store.close()


@pytest.fixture
async def node(tmp_path, ca):
    async with serving(str(tmp_path / "shared.db"), ca) as served:
        yield served


async def expect(call, code: grpc.StatusCode, reason: str, text: str = "") -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = caught.value
    assert error.code() == code, error.details()
    assert dict(error.trailing_metadata() or ()).get(REASON_METADATA_KEY) == reason, error.details()
    assert text in error.details()
    return error


async def register(node, instance_id="acme-ded", tenant="acme"):
    request = admin_pb2.RegisterInstanceRequest(
        instance_id=instance_id, tenant_id=tenant, node_endpoints=["10.0.0.5:7101"], private_endpoint="10.0.0.5:7201",
        policy=admin_pb2.InstancePolicy(management_zones=["internal"]),
    )
    return (await node.stub.RegisterInstance(request, metadata=OPERATOR)).instance


# -- KeyRegistryService -------------------------------------------------------------------------


async def test_reservation_protocol_on_the_wire(node):
    """Reserve (CREATING), resolve, commit (ENABLED), update, abort: records and errors."""
    await register(node)
    reserve = registry_pb2.ReserveKeyRequest(tenant_id="acme", instance_id="acme-ded", alias="alias/ded", request_id="r1")
    reserved = (await node.key_registry.ReserveKey(reserve)).record
    assert (reserved.state, reserved.instance_id, reserved.revision, list(reserved.aliases)) == (
        kms_pb2.KEY_STATE_CREATING, "acme-ded", 1, ["alias/ded"]
    )
    assert reserved.create_time.seconds > 0 and reserved.update_time == reserved.create_time
    assert (await node.key_registry.ReserveKey(reserve)).record.key_id == reserved.key_id

    resolved = (await node.key_registry.ResolveKey(registry_pb2.ResolveKeyRequest(tenant_id="acme", key_ref="alias/ded"))).record
    assert resolved == reserved

    committed = (await node.key_registry.CommitKey(registry_pb2.CommitKeyRequest(key_id=reserved.key_id))).record
    assert (committed.state, committed.revision) == (kms_pb2.KEY_STATE_ENABLED, 2)

    update = registry_pb2.UpdateKeyRecordRequest(
        key_id=reserved.key_id, state=kms_pb2.KEY_STATE_DISABLED, aliases=["alias/a", "alias/b"], expected_revision=2
    )
    updated = (await node.key_registry.UpdateKeyRecord(update)).record
    assert (updated.state, list(updated.aliases), updated.revision) == (kms_pb2.KEY_STATE_DISABLED, ["alias/a", "alias/b"], 3)
    await expect(node.key_registry.UpdateKeyRecord(update), grpc.StatusCode.ABORTED, "REVISION_CONFLICT", "revision 3")
    await expect(
        node.key_registry.AbortKey(registry_pb2.AbortKeyRequest(key_id=reserved.key_id)),
        grpc.StatusCode.FAILED_PRECONDITION, "KEY_STATE_CONFLICT",
    )

    second = (await node.key_registry.ReserveKey(
        registry_pb2.ReserveKeyRequest(tenant_id="acme", instance_id="acme-ded", request_id="r2")
    )).record
    await node.key_registry.AbortKey(registry_pb2.AbortKeyRequest(key_id=second.key_id))
    await expect(
        node.key_registry.AbortKey(registry_pb2.AbortKeyRequest(key_id=second.key_id)),
        grpc.StatusCode.NOT_FOUND, "KEY_NOT_FOUND",
    )


async def test_registry_errors_on_the_wire(node):
    """Every documented error of KeyRegistryService arrives with its status and reason."""
    await register(node)
    shared_id = str(uuid.uuid4())
    node.keys.create_key(
        KeyRecord(shared_id, "acme", "", {}, KeyState.ENABLED, "", "AES_256", 1, 1, 1.0,
                  versions=(VersionRecord(1, 1.0, b"w"),)),
        "alias/shared",
    )
    resolve = node.key_registry.ResolveKey
    await expect(resolve(registry_pb2.ResolveKeyRequest(tenant_id="globex", key_ref=shared_id)),
                 grpc.StatusCode.NOT_FOUND, "KEY_NOT_FOUND")
    await expect(resolve(registry_pb2.ResolveKeyRequest(tenant_id="acme", key_ref="alias/none")),
                 grpc.StatusCode.NOT_FOUND, "ALIAS_NOT_FOUND")
    await expect(resolve(registry_pb2.ResolveKeyRequest(tenant_id="", key_ref=shared_id)),
                 grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "tenant_id")
    await expect(resolve(registry_pb2.ResolveKeyRequest(tenant_id="acme", key_ref="junk")),
                 grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert (await resolve(registry_pb2.ResolveKeyRequest(tenant_id="acme", key_ref="alias/shared"))).record.instance_id == ""

    reserve = node.key_registry.ReserveKey
    await expect(reserve(registry_pb2.ReserveKeyRequest(tenant_id="acme", instance_id="acme-ded", alias="alias/shared",
                                                        request_id="x")),
                 grpc.StatusCode.ALREADY_EXISTS, "ALIAS_EXISTS")
    await expect(reserve(registry_pb2.ReserveKeyRequest(tenant_id="acme", instance_id="acme-ded")),
                 grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "request_id")
    await expect(reserve(registry_pb2.ReserveKeyRequest(tenant_id="globex", instance_id="acme-ded", request_id="y")),
                 grpc.StatusCode.NOT_FOUND, "INSTANCE_NOT_FOUND")
    await expect(node.key_registry.CommitKey(registry_pb2.CommitKeyRequest(key_id=str(uuid.uuid4()))),
                 grpc.StatusCode.NOT_FOUND, "KEY_NOT_FOUND")

    reserved = (await reserve(registry_pb2.ReserveKeyRequest(tenant_id="acme", instance_id="acme-ded", request_id="z"))).record
    await node.key_registry.CommitKey(registry_pb2.CommitKeyRequest(key_id=reserved.key_id))
    update = node.key_registry.UpdateKeyRecord
    await expect(update(registry_pb2.UpdateKeyRecordRequest(key_id=reserved.key_id, state=kms_pb2.KEY_STATE_CREATING)),
                 grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "state")
    await expect(update(registry_pb2.UpdateKeyRecordRequest(key_id=reserved.key_id, state=99)),
                 grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "state")
    await expect(update(registry_pb2.UpdateKeyRecordRequest(key_id=reserved.key_id, state=kms_pb2.KEY_STATE_ENABLED,
                                                             aliases=["alias/shared"])),
                 grpc.StatusCode.ALREADY_EXISTS, "ALIAS_EXISTS")
    await expect(update(registry_pb2.UpdateKeyRecordRequest(key_id=reserved.key_id, state=kms_pb2.KEY_STATE_ENABLED,
                                                             aliases=["bad"])),
                 grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    await expect(update(registry_pb2.UpdateKeyRecordRequest(key_id=str(uuid.uuid4()), state=kms_pb2.KEY_STATE_ENABLED)),
                 grpc.StatusCode.NOT_FOUND, "KEY_NOT_FOUND")


async def test_unattached_registry_is_not_ready(tmp_path):
    """Until the node attaches its registry, calls fail UNAVAILABLE NODE_NOT_READY; then they work."""
    request = registry_pb2.ResolveKeyRequest(tenant_id="acme", key_ref="alias/a")
    async with serving(str(tmp_path / "starting.db"), None, ready=False) as served:
        await expect(served.key_registry.ResolveKey(request), grpc.StatusCode.UNAVAILABLE, "NODE_NOT_READY")
        served.registry_servicer.attach(served.registry)
        await expect(served.key_registry.ResolveKey(request), grpc.StatusCode.NOT_FOUND, "ALIAS_NOT_FOUND")


# -- AdminService and AccessRegistryService -----------------------------------------------------------


async def test_instances_on_the_wire(node):
    """Register, describe, list with pages; duplicates, bad requests, other tenants, no tenant."""
    instance = await register(node)
    assert (instance.tenant_id, list(instance.policy.management_zones), instance.policy.allow_public_crypto) == (
        "acme", ["internal"], False
    )
    assert instance.create_time.seconds > 0
    described = await node.stub.DescribeInstance(admin_pb2.DescribeInstanceRequest(instance_id="acme-ded"), metadata=ACME)
    assert described.instance == instance
    await register(node, "acme-two")
    page = await node.stub.ListInstances(admin_pb2.ListInstancesRequest(page_size=1), metadata=ACME)
    assert [i.instance_id for i in page.instances] == ["acme-ded"] and page.next_page_token
    rest = await node.stub.ListInstances(admin_pb2.ListInstancesRequest(page_token=page.next_page_token), metadata=ACME)
    assert [i.instance_id for i in rest.instances] == ["acme-two"] and not rest.next_page_token

    await expect(register(node), grpc.StatusCode.ALREADY_EXISTS, "INSTANCE_EXISTS")
    await expect(register(node, "Bad_Id"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "instance_id")
    await expect(node.stub.DescribeInstance(admin_pb2.DescribeInstanceRequest(instance_id="acme-ded"), metadata=GLOBEX),
                 grpc.StatusCode.NOT_FOUND, "INSTANCE_NOT_FOUND")
    await expect(node.stub.ListInstances(admin_pb2.ListInstancesRequest(page_token="bad!"), metadata=ACME),
                 grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN", "page_token")
    for tenant in ("globex", "acme"):
        request = admin_pb2.RegisterInstanceRequest(instance_id="g", tenant_id=tenant, node_endpoints=["h:1"])
        await expect(node.stub.RegisterInstance(request, metadata=ACME), grpc.StatusCode.PERMISSION_DENIED,
                     "PERMISSION_DENIED", "operators only")
    await expect(node.stub.ListInstances(admin_pb2.ListInstancesRequest()), grpc.StatusCode.PERMISSION_DENIED,
                 "PERMISSION_DENIED", "keyrelay-access-point")
    gone = (("keyrelay-access-point", "ap-deleted"),)
    await expect(node.stub.ListInstances(admin_pb2.ListInstancesRequest(), metadata=gone),
                 grpc.StatusCode.UNAUTHENTICATED, "CREDENTIAL_REVOKED", "deleted")
    everything = await node.stub.ListInstances(admin_pb2.ListInstancesRequest(), metadata=OPERATOR)
    assert len(everything.instances) == 2


async def test_access_points_and_credentials_on_the_wire(node, ca):
    """Create an access point, issue a credential from a CSR, authenticate it, list, revoke,
    hit the limit, delete the access point: statuses, reasons and records."""
    create = admin_pb2.CreateAccessPointRequest(
        tenant_id="acme", name="app", role=admin_pb2.ACCESS_POINT_ROLE_CRYPTO_USER, key_patterns=["alias/app-*"],
        allowed_zones=["internal"], allowed_cidrs=["10.0.0.0/8"],
    )
    point = (await node.stub.CreateAccessPoint(create, metadata=ACME)).access_point
    assert (point.role, list(point.roles), list(point.key_patterns), list(point.allowed_cidrs), point.operator) == (
        admin_pb2.ACCESS_POINT_ROLE_CRYPTO_USER, [admin_pb2.ACCESS_POINT_ROLE_CRYPTO_USER], ["alias/app-*"],
        ["10.0.0.0/8"], False,
    )
    listed = await node.stub.ListAccessPoints(admin_pb2.ListAccessPointsRequest(tenant_id="acme"), metadata=ACME)
    assert list(listed.access_points)[1:] == [point]

    key_pem, csr_pem = pki.make_key_and_csr()
    issue = admin_pb2.IssueCredentialRequest(
        access_point_id=point.access_point_id, certificate_signing_request_pem=csr_pem.decode(), validity_days=30
    )
    issued = await node.stub.IssueCredential(issue, metadata=ACME)
    cert = x509.load_pem_x509_certificate(issued.certificate_pem.encode())
    assert issued.ca_certificate_pem.encode() == ca.certificate_pem
    assert issued.credential.serial == pki.serial_hex(cert)
    assert issued.credential.fingerprint_sha256 == pki.fingerprint_sha256(cert)
    assert not issued.credential.revoked and not issued.credential.HasField("revoke_time")

    auth = registry_pb2.AuthenticateCredentialRequest(serial=pki.serial_hex(cert), fingerprint_sha256=pki.fingerprint_sha256(cert))
    answer = await node.access.AuthenticateCredential(auth)
    assert answer.access_point == point and answer.credential == issued.credential
    await expect(node.access.AuthenticateCredential(
        registry_pb2.AuthenticateCredentialRequest(serial=auth.serial, fingerprint_sha256="00" * 32)
    ), grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")

    later = []
    for _ in range(2):
        later += [await node.stub.IssueCredential(
            admin_pb2.IssueCredentialRequest(access_point_id=point.access_point_id,
                                             certificate_signing_request_pem=pki.make_key_and_csr()[1].decode()),
            metadata=ACME,
        )]
    await expect(node.stub.IssueCredential(issue, metadata=ACME), grpc.StatusCode.FAILED_PRECONDITION,
                 "CREDENTIAL_LIMIT_REACHED")
    bad_days = admin_pb2.IssueCredentialRequest(access_point_id=point.access_point_id,
                                                certificate_signing_request_pem=csr_pem.decode(), validity_days=400)
    await expect(node.stub.IssueCredential(bad_days, metadata=ACME), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    bad_csr = admin_pb2.IssueCredentialRequest(access_point_id=point.access_point_id, certificate_signing_request_pem="x")
    await expect(node.stub.IssueCredential(bad_csr, metadata=ACME), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")

    revoked = (await node.stub.RevokeCredential(admin_pb2.RevokeCredentialRequest(serial=auth.serial), metadata=ACME)).credential
    assert revoked.revoked and revoked.HasField("revoke_time")
    await expect(node.access.AuthenticateCredential(auth), grpc.StatusCode.UNAUTHENTICATED, "CREDENTIAL_REVOKED")
    await expect(node.stub.RevokeCredential(admin_pb2.RevokeCredentialRequest(serial=auth.serial), metadata=GLOBEX),
                 grpc.StatusCode.NOT_FOUND, "CREDENTIAL_NOT_FOUND")
    credentials = await node.stub.ListCredentials(
        admin_pb2.ListCredentialsRequest(access_point_id=point.access_point_id), metadata=ACME
    )
    assert len(credentials.credentials) == 3

    other = admin_pb2.DescribeAccessPointRequest(access_point_id=point.access_point_id)
    await expect(node.stub.DescribeAccessPoint(other, metadata=GLOBEX), grpc.StatusCode.NOT_FOUND, "ACCESS_POINT_NOT_FOUND")
    await expect(node.stub.ListAccessPoints(admin_pb2.ListAccessPointsRequest(tenant_id="acme"), metadata=GLOBEX),
                 grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    no_role = admin_pb2.CreateAccessPointRequest(tenant_id="acme", name="x")
    await expect(node.stub.CreateAccessPoint(no_role, metadata=ACME), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "role")
    bad_cidr = admin_pb2.CreateAccessPointRequest(tenant_id="acme", name="x", role=admin_pb2.ACCESS_POINT_ROLE_ADMIN,
                                                  allowed_cidrs=["10.0.0.0/99"])
    await expect(node.stub.CreateAccessPoint(bad_cidr, metadata=ACME), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "CIDR")

    live = later[0].credential
    await node.stub.DeleteAccessPoint(admin_pb2.DeleteAccessPointRequest(access_point_id=point.access_point_id), metadata=ACME)
    await expect(node.access.AuthenticateCredential(
        registry_pb2.AuthenticateCredentialRequest(serial=live.serial, fingerprint_sha256=live.fingerprint_sha256)
    ), grpc.StatusCode.UNAUTHENTICATED, "CREDENTIAL_REVOKED")
    await expect(node.stub.DeleteAccessPoint(admin_pb2.DeleteAccessPointRequest(access_point_id=point.access_point_id),
                                             metadata=ACME),
                 grpc.StatusCode.NOT_FOUND, "ACCESS_POINT_NOT_FOUND")


async def test_issue_without_ca_on_the_wire(tmp_path):
    """A node without a CA answers IssueCredential FAILED_PRECONDITION."""
    async with serving(str(tmp_path / "noca.db"), None) as served:
        point = (await served.stub.CreateAccessPoint(
            admin_pb2.CreateAccessPointRequest(tenant_id="acme", name="a", role=admin_pb2.ACCESS_POINT_ROLE_ADMIN),
            metadata=ACME,
        )).access_point
        request = admin_pb2.IssueCredentialRequest(
            access_point_id=point.access_point_id, certificate_signing_request_pem=pki.make_key_and_csr()[1].decode()
        )
        await expect(served.stub.IssueCredential(request, metadata=ACME), grpc.StatusCode.FAILED_PRECONDITION,
                     "FAILED_PRECONDITION", "no CA configured")
