"""Key lifecycle and cryptography through KmsClient against a node on a real SoftHSM pool."""

from __future__ import annotations

import pytest

import client_sdk as kr
from client_sdk import KmsClient


def test_create_describe_list_with_alias_and_tags(kms):
    key = kms.create_key(description="orders", tags={"team": "pay"}, alias="alias/orders")
    assert key.state == "ENABLED" and key.primary_version == 1 and key.aliases == ("alias/orders",)
    assert kms.describe_key("alias/orders").key_id == key.key_id
    assert kms.describe_key(key.key_id).tags == {"team": "pay"}
    others = [kms.create_key(description=f"k{i}") for i in range(4)]
    page = kms.list_keys(page_size=2)
    assert len(page.keys) == 2 and page.next_page_token
    listed = [k.key_id for k in kms.iter_keys(page_size=2)]
    assert listed == [key.key_id, *[k.key_id for k in others]]


def test_rotation_keeps_old_versions_decrypting_until_retired(kms):
    key = kms.create_key()
    first = kms.encrypt(key.key_id, b"v1", context={"c": "1"})
    rotated = kms.rotate_key(key.key_id)
    assert rotated.primary_version == 2 and rotated.versions == (1, 2)
    second = kms.encrypt(key.key_id, b"v2", context={"c": "1"})
    assert (first.key_version, second.key_version) == (1, 2)
    assert kms.decrypt(first.ciphertext_blob, context={"c": "1"}).plaintext == b"v1"
    assert kms.decrypt(second.ciphertext_blob, context={"c": "1"}).plaintext == b"v2"
    # ReEncrypt moves an old ciphertext to the newest version inside the KMS.
    moved = kms.re_encrypt(first.ciphertext_blob, key.key_id, source_context={"c": "1"}, destination_context={"c": "1"})
    assert (moved.source_key_version, moved.key_version) == (1, 2)
    kms.update_key(key.key_id, min_decryption_version=2)
    with pytest.raises(kr.KeyVersionRetiredError, match="minimum decryption version"):
        kms.decrypt(first.ciphertext_blob, context={"c": "1"})
    assert kms.decrypt(moved.ciphertext_blob, context={"c": "1"}).plaintext == b"v1"


def test_disable_enable_schedule_cancel(kms):
    key = kms.create_key()
    blob = kms.encrypt(key.key_id, b"data").ciphertext_blob
    assert kms.disable_key(key.key_id).state == "DISABLED"
    with pytest.raises(kr.KeyDisabledError):
        kms.decrypt(blob)
    kms.enable_key(key.key_id)
    pending = kms.schedule_key_deletion(key.key_id)
    assert pending.state == "PENDING_DELETION"
    assert 29.9 < (pending.deletion_time - pending.create_time).total_seconds() / 86400 < 30.1
    with pytest.raises(kr.KeyPendingDeletionError):
        kms.decrypt(blob)
    assert kms.cancel_key_deletion(key.key_id).state == "DISABLED"
    kms.enable_key(key.key_id)
    assert kms.decrypt(blob).plaintext == b"data"


def test_data_keys_random_and_batches(kms):
    key = kms.create_key(alias="alias/dk")
    for size in (16, 32, 64):
        dk = kms.generate_data_key("alias/dk", number_of_bytes=size, context={"file": "a"})
        assert len(dk.plaintext) == size
        assert kms.decrypt(dk.ciphertext_blob, context={"file": "a"}).plaintext == dk.plaintext
    blind = kms.generate_data_key_without_plaintext(key.key_id)
    assert blind.plaintext == b"" and len(kms.decrypt(blind.ciphertext_blob).plaintext) == 32
    assert len(kms.generate_random(1024)) == 1024
    generated = kms.batch_generate_data_key([(key.key_id, 32, {"i": str(i)}) for i in range(300)])
    assert all(item.ok for item in generated)
    decrypted = kms.batch_decrypt([(item.value.ciphertext_blob, {"i": str(i)}) for i, item in enumerate(generated)])
    assert [d.value.plaintext for d in decrypted] == [g.value.plaintext for g in generated]


def test_aliases_move_and_delete(kms):
    a, b = kms.create_key(), kms.create_key()
    kms.create_alias("alias/current", a.key_id)
    assert kms.delete_alias("alias/current") == a.key_id
    kms.create_alias("alias/current", b.key_id)
    assert kms.describe_key("alias/current").key_id == b.key_id
    with pytest.raises(kr.AliasNotFoundError):
        kms.delete_alias("alias/never")


def test_tenants_cannot_see_each_others_keys(served_node, kms):
    key = kms.create_key(alias="alias/mine")
    blob = kms.encrypt(key.key_id, b"acme only").ciphertext_blob
    with KmsClient(served_node.target, tenant="globex") as other:
        for attempt, error in (
            (lambda: other.describe_key(key.key_id), kr.KeyNotFoundError),
            (lambda: other.describe_key("alias/mine"), kr.AliasNotFoundError),
            (lambda: other.decrypt(blob), kr.KeyNotFoundError),
            (lambda: other.rotate_key(key.key_id), kr.KeyNotFoundError),
        ):
            with pytest.raises(error):
                attempt()
        assert other.list_keys().keys == []


def test_sealed_public_key_round_trip(kms):
    key = kms.create_key()
    sealed = kms.seal_public_key(key.key_id, "alice", b"alice bundle v1", 1)
    assert b"alice bundle" not in sealed.sealed_bundle + sealed.wrapped_dek
    opened = kms.open_public_key(sealed)
    assert opened.public_key_bundle == b"alice bundle v1" and opened.key_id == key.key_id
    # The wrapped DEK is refused by the public Decrypt: its context is reserved to the KMS.
    with pytest.raises(kr.CiphertextAuthenticationError):
        kms.decrypt(sealed.wrapped_dek)


def test_many_threads_at_once_on_the_pool(served_node):
    """Concurrent calls on several HSM sessions and slots (SoftHSM initialised with OS locking)."""
    from concurrent.futures import ThreadPoolExecutor

    with KmsClient(served_node.target, tenant="acme", timeout=60) as kms:
        keys = [kms.create_key() for _ in range(3)]

        def work(i: int) -> bool:
            key = keys[i % len(keys)]
            ok = True
            for j in range(25):
                data = f"{i}-{j}".encode()
                blob = kms.encrypt(key.key_id, data, context={"i": str(i)}).ciphertext_blob
                ok &= kms.decrypt(blob, context={"i": str(i)}).plaintext == data
            return ok

        with ThreadPoolExecutor(max_workers=12) as executor:
            assert all(executor.map(work, range(12)))
    assert all(slot.up for slot in served_node.node.pool.status())


def test_a_reserved_key_id_is_created_once(kms):
    import uuid

    key_id = str(uuid.uuid4())
    request_key = kms._stub.CreateKey
    from keyrelay.v1 import kms_pb2

    request_key(kms_pb2.CreateKeyRequest(key_id=key_id), metadata=[("keyrelay-tenant", "acme")])
    assert kms.describe_key(key_id).key_id == key_id
    import grpc

    with pytest.raises(grpc.RpcError) as caught:
        request_key(kms_pb2.CreateKeyRequest(key_id=key_id), metadata=[("keyrelay-tenant", "acme")])
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
