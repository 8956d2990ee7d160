"""The HSM pool on real SoftHSM tokens: failover when a slot breaks, and keys that never leave."""

from __future__ import annotations

import time

import pkcs11
import pytest
from pkcs11 import Attribute, ObjectClass

from kms_node.hsm import cryptoki


def _all_keys_work(kms, keys_and_blobs) -> None:
    for key, blob in keys_and_blobs:
        assert kms.decrypt(blob, context={"k": key.key_id}).plaintext == key.key_id.encode()
        fresh = kms.encrypt(key.key_id, b"again").ciphertext_blob
        assert kms.decrypt(fresh).plaintext == b"again"


def test_a_broken_slot_leaves_rotation_and_every_key_works_from_the_other(kms, served_node, hsm_pool_tokens):
    module, labels, _ = hsm_pool_tokens
    keys = [kms.create_key() for _ in range(4)]
    keys_and_blobs = [(k, kms.encrypt(k.key_id, k.key_id.encode(), context={"k": k.key_id}).ciphertext_blob) for k in keys]
    pool = served_node.node.pool
    # Break slot A's sessions underneath the pool (as a device reset would).
    cryptoki.close_all_sessions(module, pool.slot_ids()[labels[0]])
    for _ in range(3):  # enough calls to hit every leased session of the broken slot
        _all_keys_work(kms, keys_and_blobs)
    states = {s.label: s for s in pool.status()}
    assert states[labels[1]].up
    # The broken slot is retried in the background and comes back.
    deadline = time.monotonic() + 20
    while not all(s.up for s in pool.status()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(s.up for s in pool.status()), pool.status()
    _all_keys_work(kms, keys_and_blobs)


def test_all_slots_broken_gives_unavailable_then_recovers(node_config, hsm_pool_tokens, serve_node):
    from dataclasses import replace

    import client_sdk as kr

    module, labels, pin = hsm_pool_tokens
    # Slots retried only by hand here, so the test sees the pool with every slot down.
    config = replace(node_config, hsm=replace(node_config.hsm, slot_retry_seconds=3600, checkout_timeout_seconds=1))
    served = serve_node(config, pin)
    with kr.KmsClient(served.target, timeout=30) as kms:
        key = kms.create_key()
        pool = served.node.pool
        for slot_id in pool.slot_ids().values():
            cryptoki.close_all_sessions(module, slot_id)
        with pytest.raises(kr.HsmUnavailableError, match="slots out of rotation"):
            for _ in range(20):
                kms.encrypt(key.key_id, b"x", timeout=4)  # retried within the deadline, then reported
        for slot in pool._slots:
            pool._open_slot(slot)
        assert kms.decrypt(kms.encrypt(key.key_id, b"back").ciphertext_blob).plaintext == b"back"


def test_loaded_master_keys_are_sensitive_and_unreadable(kms, served_node, hsm_pool_tokens):
    module, labels, pin = hsm_pool_tokens
    key = kms.create_key()
    kms.encrypt(key.key_id, b"load the key into a slot")
    lib = cryptoki.load_library(module)
    loaded = 0
    for label in labels:
        session = lib.get_token(token_label=label).open()  # the node's login is shared in-process
        try:
            cmks = list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.TOKEN: False}))
            loaded += len(cmks)
            domain = session.get_key(object_class=ObjectClass.SECRET_KEY, label="keyrelay-domain-key")
            for obj in [*cmks, domain]:
                assert obj[Attribute.SENSITIVE] is True
                assert obj[Attribute.EXTRACTABLE] is False
                with pytest.raises(pkcs11.exceptions.AttributeSensitive):
                    obj[Attribute.VALUE]
            assert domain[Attribute.TOKEN] is True
        finally:
            session.close()
    # The CMK the node used was loaded into some slot, as a session object (never a token object).
    assert loaded >= 1
