"""A dedicated CreateKey interrupted by a crash of the instance's node, completed by its retry.

The gateway reserves the key in the shared registry (CREATING), the instance makes it, and the
gateway commits it. When the node dies after making the key but before answering, the client's
retry (same request id) must finish the job: the instance recognises its own earlier create by the
key id before it looks at the alias, and the gateway commits the reservation.
"""

from __future__ import annotations

import uuid

import pytest

from foundation.wire import REQUEST_ID_METADATA_KEY, TENANT_METADATA_KEY
from inprocess_cluster import InProcessCluster
from keyrelay.v1 import kms_pb2, registry_pb2, registry_pb2_grpc

pytestmark = pytest.mark.hsm

INSTANCE = "acme-vault"
KMS = "/keyrelay.v1.KeyManagementService/"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, softhsm):
    served = InProcessCluster(tmp_path_factory.mktemp("create-recovery"), instance_id=INSTANCE).start()
    served.acme = served.owned_by("acme")
    yield served
    served.stop()


def test_a_retried_dedicated_create_completes_the_key_its_lost_answer_made(cluster):
    """The instance made the key and its answer was lost (the node died before answering): the
    retry with the same request id finds the key instead of meeting its alias, and the gateway
    commits the reservation, so the alias names a key the gateway describes and uses."""
    request_id, alias = uuid.uuid4().hex, f"alias/lost-{uuid.uuid4().hex[:8]}"
    # What the gateway did before the crash: reserve, then create on the instance.
    registry = registry_pb2_grpc.KeyRegistryServiceStub(cluster.internal_channel(cluster.shared_target))
    reserved = registry.ReserveKey(
        registry_pb2.ReserveKeyRequest(tenant_id="acme", instance_id=INSTANCE, alias=alias, request_id=request_id),
        timeout=30,
    ).record
    node = cluster.internal_channel(cluster.dedicated_target)
    node.unary_unary(KMS + "CreateKey")(
        kms_pb2.CreateKeyRequest(alias=alias, instance_id=INSTANCE, key_id=reserved.key_id).SerializeToString(),
        metadata=[(TENANT_METADATA_KEY, "acme"), (REQUEST_ID_METADATA_KEY, request_id)], timeout=30,
    )
    # The client's retry, same request id.
    gateway = cluster.acme.channel(cluster.zone_targets["public"])
    created = kms_pb2.CreateKeyResponse.FromString(gateway.unary_unary(KMS + "CreateKey")(
        kms_pb2.CreateKeyRequest(alias=alias, instance_id=INSTANCE).SerializeToString(),
        metadata=[(REQUEST_ID_METADATA_KEY, request_id)], timeout=30,
    ))
    assert created.key_metadata.key_id == reserved.key_id
    described = kms_pb2.DescribeKeyResponse.FromString(gateway.unary_unary(KMS + "DescribeKey")(
        kms_pb2.DescribeKeyRequest(key_id=alias).SerializeToString(), timeout=30,
    ))
    assert described.key_metadata.key_id == reserved.key_id
    assert described.key_metadata.state == kms_pb2.KEY_STATE_ENABLED
