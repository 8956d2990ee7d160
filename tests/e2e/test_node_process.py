"""`keyrelay node` as a real process: restart, slot loss, what the token and the disk hold."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time

import pytest

import client_sdk as kr
from client_sdk import KmsClient
from kms_node import devsetup


def test_keys_survive_rotation_sigterm_and_restart(dev_pool):
    node = dev_pool.start()
    with KmsClient(node.target) as kms:
        key = kms.create_key(description="restart", alias="alias/restart")
        first = kms.encrypt(key.key_id, b"before rotation", context={"app": "e2e"})
        kms.rotate_key("alias/restart")
        second = kms.encrypt(key.key_id, b"after rotation", context={"app": "e2e"})
        assert (first.key_version, second.key_version) == (1, 2)
        for blob, text in ((first, b"before rotation"), (second, b"after rotation")):
            assert kms.decrypt(blob.ciphertext_blob, context={"app": "e2e"}).plaintext == text
    assert node.terminate() == 0, "SIGTERM drains and exits 0"
    assert b"draining in-flight calls" in dev_pool.log.read_bytes()

    node = dev_pool.start()
    with KmsClient(node.target) as kms:
        assert kms.describe_key("alias/restart").versions == (1, 2)
        assert kms.decrypt(first.ciphertext_blob, context={"app": "e2e"}).plaintext == b"before rotation"
        assert kms.decrypt(second.ciphertext_blob, context={"app": "e2e"}).plaintext == b"after rotation"
    assert node.terminate() == 0


def test_every_key_works_with_one_slot_removed_from_the_config(dev_pool):
    node = dev_pool.start()
    with KmsClient(node.target) as kms:
        keys = [kms.create_key() for _ in range(3)]
        blobs = [kms.encrypt(k.key_id, k.key_id.encode()).ciphertext_blob for k in keys]
    assert node.terminate() == 0

    # Only slot B is left: every master key was wrapped by the pool's domain key, which B holds too.
    node = dev_pool.start(dev_pool.write_config(["e2e-b"], name="only-b.toml"))
    with KmsClient(node.target) as kms:
        for key, blob in zip(keys, blobs):
            assert kms.decrypt(blob).plaintext == key.key_id.encode()
            assert kms.decrypt(kms.encrypt(key.key_id, b"new").ciphertext_blob).plaintext == b"new"
        kms.rotate_key(keys[0].key_id)
    assert node.terminate() == 0


def test_hsm_init_refuses_to_overwrite_the_domain_key(dev_pool):
    with pytest.raises(subprocess.CalledProcessError) as caught:
        dev_pool.init()
    assert "already hold the domain key" in caught.value.stderr
    assert caught.value.returncode == 1


def _pkcs11_tool(dev_pool, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["pkcs11-tool", "--module", devsetup.softhsm_module(), *args],
        env=dev_pool.env, capture_output=True, text=True, timeout=60,
    )


def test_pkcs11_tool_sees_a_sensitive_unextractable_domain_key_and_no_readable_key(dev_pool):
    node = dev_pool.start()
    with KmsClient(node.target) as kms:
        key = kms.create_key()
        kms.encrypt(key.key_id, b"load a CMK into the slots")
        for token in dev_pool.tokens:
            listing = _pkcs11_tool(
                dev_pool, "--token-label", token, "--login", "--pin", devsetup.DEV_PIN, "--list-objects", "--type", "secrkey"
            )
            assert listing.returncode == 0, listing.stderr
            # Exactly one secret key is visible to another process: the domain key. CMKs live
            # only as session objects of the node.
            assert listing.stdout.count("Secret Key Object") == 1, listing.stdout
            assert "label:      keyrelay-domain-key" in listing.stdout
            access = re.search(r"Access:\s*(.*)", listing.stdout).group(1)
            assert "sensitive" in access and "extractable" not in access.replace("never extractable", ""), access
            assert re.search(r"Usage:\s*wrap, unwrap\s*$", listing.stdout, re.M), listing.stdout
            read = _pkcs11_tool(
                dev_pool, "--token-label", token, "--login", "--pin", devsetup.DEV_PIN,
                "--read-object", "--type", "secrkey", "--label", "keyrelay-domain-key",
            )
            assert read.returncode != 0 and "CKR_ATTRIBUTE_SENSITIVE" in read.stderr, read.stderr
    assert node.terminate() == 0


def test_no_data_key_plaintext_reaches_the_store_or_the_log(dev_pool):
    node = dev_pool.start()
    with KmsClient(node.target) as kms:
        key = kms.create_key()
        data_keys = [kms.generate_data_key(key.key_id, context={"i": str(i)}).plaintext for i in range(20)]
        secret = b"plaintext that must never be written anywhere"
        kms.decrypt(kms.encrypt(key.key_id, secret).ciphertext_blob)
        with pytest.raises(kr.CiphertextAuthenticationError):
            kms.decrypt(kms.encrypt(key.key_id, secret, context={"a": "1"}).ciphertext_blob, context={"a": "2"})
    assert node.terminate() == 0
    stored = b"".join(p.read_bytes() for p in dev_pool.root.glob("node.db*"))
    logged = dev_pool.log.read_bytes()
    assert len(stored) > 0 and len(logged) > 0
    for needle in [*data_keys, secret]:
        for haystack in (stored, logged):
            assert needle not in haystack
            assert needle.hex().encode() not in haystack
    assert devsetup.DEV_PIN.encode() not in stored + logged


def test_a_wrong_pin_missing_token_bad_setting_or_busy_port_stops_the_node_with_a_clear_message(dev_pool):
    env = dict(dev_pool.env, KEYRELAY_HSM_PIN="not-the-pin")
    done = subprocess.run(
        [*devsetup.keyrelay_command(), "node", "--config", str(dev_pool.config)],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "login refused (PinIncorrect): check the PIN" in done.stderr
    assert "not-the-pin" not in done.stderr

    missing = dev_pool.write_config(["no-such-token"], name="missing.toml")
    done = subprocess.run(
        [*devsetup.keyrelay_command(), "node", "--config", str(missing)],
        env=dev_pool.env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "no token labelled 'no-such-token' (run `keyrelay hsm init`)" in done.stderr

    done = subprocess.run(
        [*devsetup.keyrelay_command(), "node", "--config", str(dev_pool.config), "--set", "hsm.sessions_per_slot=0"],
        env=dev_pool.env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "hsm.sessions_per_slot must be at least 1" in done.stderr

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", dev_pool.port))
        taken.listen()
        done = subprocess.run(
            [*devsetup.keyrelay_command(), "node", "--config", str(dev_pool.config)],
            env=dev_pool.env, capture_output=True, text=True, timeout=60,
        )
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{dev_pool.port} (the internal port, `listen`): the port is in use" in done.stderr
    assert "Traceback" not in done.stderr


def test_sigterm_lets_in_flight_calls_finish(dev_pool):
    import grpc

    from keyrelay.v1 import kms_pb2, kms_pb2_grpc

    node = dev_pool.start()
    with KmsClient(node.target) as kms:
        key = kms.create_key()
    with grpc.insecure_channel(node.target) as channel:
        stub = kms_pb2_grpc.KeyManagementServiceStub(channel)
        request = kms_pb2.BatchGenerateDataKeyRequest(
            items=[kms_pb2.BatchGenerateDataKeyItem(key_id=key.key_id) for _ in range(1000)]
        )
        # Connect first, so the calls are on the wire before the signal even on a loaded machine.
        grpc.channel_ready_future(channel).result(timeout=30)
        calls = [stub.BatchGenerateDataKey.future(request, timeout=60) for _ in range(6)]
        time.sleep(0.2)
        node.proc.send_signal(signal.SIGTERM)
        for call in calls:
            results = call.result().results
            assert len(results) == 1000 and all(not r.HasField("error") for r in results)
    assert node.proc.wait(30) == 0
    assert b"draining in-flight calls" in dev_pool.log.read_bytes()
