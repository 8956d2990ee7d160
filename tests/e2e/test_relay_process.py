"""The relay as a real `keyrelay relay` process: messages survive SIGKILL and are stored exactly
once, and after an end-to-end exchange through a real KMS node neither the relay's database nor
its log holds the message's plaintext or the users' public keys."""

from __future__ import annotations

import base64
import sqlite3
import threading
import time
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from client_sdk import KmsClient, RelayClient
from keyrelay.v1 import messaging_pb2
from relay.devsetup import RelayProcess

pytestmark = pytest.mark.e2e

SENDERS = ("sender-1", "sender-2", "sender-3")
TOTAL = 1000
KILL_AFTER = (200, 600)  # SIGKILL the relay once this many Sends have returned


@pytest.fixture
def relay(tmp_path, e2e_tools):
    relay = RelayProcess(tmp_path).start()
    yield relay
    relay.process.kill()


def test_messages_survive_sigkill_and_are_stored_exactly_once(relay):
    tokens = {}
    for user in (*SENDERS, "rcpt"):
        with relay.client() as client:
            tokens[user] = client.create_account(user).device_token

    receipts: dict[tuple[str, str], str] = {}  # (sender, client id) -> message id, for every Send that returned
    receipts_lock = threading.Lock()
    delivered: dict[str, tuple[str, str]] = {}  # message id -> (sender, client id)
    deliveries = 0
    failures: list[BaseException] = []
    all_sent = threading.Event()

    def send(index: int, sender: str) -> None:
        try:
            with relay.client(tokens[sender]) as client:
                for n in range(index, TOTAL, len(SENDERS)):
                    client_id = f"{sender}-{n}"
                    receipt = client.send("rcpt", f"envelope {n}".encode(), client_message_id=client_id)
                    with receipts_lock:
                        receipts[(sender, client_id)] = receipt.message_id
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            failures.append(exc)

    def receive() -> None:
        nonlocal deliveries
        try:
            with relay.client(tokens["rcpt"]) as client:
                for message in client.messages():
                    deliveries += 1
                    delivered[message.message_id] = (message.sender_user_id, message.client_message_id)
                    client.ack([message.message_id])
                    if all_sent.is_set() and len(delivered) >= len(receipts) and len(delivered) >= TOTAL:
                        return
        except BaseException as exc:  # noqa: BLE001
            failures.append(exc)

    receiver = threading.Thread(target=receive, daemon=True)
    senders = [threading.Thread(target=send, args=(i, s), daemon=True) for i, s in enumerate(SENDERS)]
    receiver.start()
    for thread in senders:
        thread.start()
    sent_at_kill = []
    for threshold in KILL_AFTER:
        deadline = time.monotonic() + 120
        while len(receipts) < threshold and time.monotonic() < deadline and not failures:
            time.sleep(0.005)
        relay.process.kill()  # SIGKILL: no drain, no flush
        sent_at_kill.append(len(receipts))
        relay.start()
    for thread in senders:
        thread.join(180)
    all_sent.set()
    receiver.join(120)

    assert not failures, failures
    # Both kills hit the relay while senders were still sending.
    assert all(threshold <= n < TOTAL for threshold, n in zip(KILL_AFTER, sent_at_kill)), sent_at_kill
    assert relay.log.read_text().count("relay serving on port") == 3
    assert not receiver.is_alive(), f"the recipient got {len(delivered)} of {TOTAL} messages"
    assert len(receipts) == TOTAL
    # No message lost after its Send returned: every receipt's message arrived.
    assert set(receipts.values()) <= set(delivered)
    # Exactly once: one stored message per (sender, client id), whatever the retries across the kills.
    assert sorted(delivered.values()) == sorted(receipts)
    assert len(delivered) == TOTAL
    relay.process.terminate()
    with sqlite3.connect(relay.db) as db:
        assert db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0  # every one acknowledged
        assert db.execute("SELECT COUNT(*) FROM sent").fetchone()[0] == TOTAL
        assert db.execute("SELECT pending_count, pending_bytes FROM accounts WHERE user_id = 'rcpt'").fetchone() == (0, 0)
    print(f"{deliveries} deliveries of {TOTAL} messages across 2 SIGKILLs")


def test_sigterm_drains_and_exits_zero(relay):
    assert relay.process.terminate() == 0
    log = relay.log.read_text()
    assert "relay serving on port" in log and "relay stopped" in log


# -- an end-to-end exchange, and what the relay holds afterwards -------------------------------

_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
_SIGNING_PREFIX = b"keyrelay.v1.envelope"


@dataclass
class Device:
    """A user's device: its private keys stay here; the relay client has its token."""

    user_id: str
    kem: X25519PrivateKey
    signing: Ed25519PrivateKey
    relay: RelayClient

    def raw_public_keys(self) -> list[bytes]:
        raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
        return [self.kem.public_key().public_bytes(*raw), self.signing.public_key().public_bytes(*raw)]

    def register(self, kms: KmsClient, key_id: str) -> None:
        kem_public, signing_public = self.raw_public_keys()
        bundle = messaging_pb2.PublicKeyBundle(
            user_id=self.user_id, bundle_version=1, kem=messaging_pb2.KEM_ALGORITHM_X25519,
            kem_public_key=kem_public, signing_public_key=signing_public,
        )
        sealed = kms.seal_public_key(key_id, self.user_id, bundle.SerializeToString(), 1)
        self.relay.publish_record(sealed, key_id)


def open_bundle(kms: KmsClient, relay: RelayClient, user_id: str) -> messaging_pb2.PublicKeyBundle:
    record = relay.get_record(user_id)
    bundle = messaging_pb2.PublicKeyBundle.FromString(kms.open_public_key(record.sealed).public_key_bundle)
    assert (bundle.user_id, bundle.bundle_version) == (user_id, record.record_version)
    return bundle


def _info(body: messaging_pb2.EnvelopeBody) -> bytes:
    return "\n".join([body.sender_user_id, body.recipient_user_id, body.message_id,
                      str(body.sender_bundle_version), str(body.recipient_bundle_version)]).encode()


def seal_message(kms: KmsClient, sender: Device, recipient_id: str, plaintext: bytes, message_id: str) -> bytes:
    bundle = open_bundle(kms, sender.relay, recipient_id)
    body = messaging_pb2.EnvelopeBody(
        sender_user_id=sender.user_id, recipient_user_id=recipient_id, message_id=message_id,
        sender_bundle_version=1, recipient_bundle_version=bundle.bundle_version, kem=bundle.kem,
    )
    body.hpke_ciphertext = _SUITE.encrypt(
        plaintext, X25519PublicKey.from_public_bytes(bundle.kem_public_key), info=_info(body)
    )
    body_bytes = body.SerializeToString()
    signature = sender.signing.sign(_SIGNING_PREFIX + body_bytes)
    return messaging_pb2.SignedEnvelope(body=body_bytes, signature=signature).SerializeToString()


def open_message(kms: KmsClient, recipient: Device, sender_id: str, envelope: bytes) -> bytes:
    signed = messaging_pb2.SignedEnvelope.FromString(envelope)
    sender_bundle = open_bundle(kms, recipient.relay, sender_id)
    Ed25519PublicKey.from_public_bytes(sender_bundle.signing_public_key).verify(
        signed.signature, _SIGNING_PREFIX + signed.body
    )
    body = messaging_pb2.EnvelopeBody.FromString(signed.body)
    assert (body.sender_user_id, body.recipient_user_id) == (sender_id, recipient.user_id)
    return _SUITE.decrypt(body.hpke_ciphertext, recipient.kem, info=_info(body))


def _forms(secret: bytes) -> list[bytes]:
    """The ways a byte string could show up in a file or a log line."""
    return [secret, secret.hex().encode(), base64.b64encode(secret), base64.urlsafe_b64encode(secret).rstrip(b"=")]


def test_relay_holds_neither_plaintext_nor_public_keys_after_an_exchange(tmp_path, dev_pool):
    node = dev_pool.start()
    relay = RelayProcess(tmp_path / "relay", extra='log_level = "debug"').start()
    plaintext = b"the quarterly numbers are in the blue folder, 7f3a9c"
    try:
        with KmsClient(node.target, tenant="acme") as kms:
            key_id = kms.create_key(description="directory sealing key").key_id
            alice = Device("alice", X25519PrivateKey.generate(), Ed25519PrivateKey.generate(), relay.client())
            bob = Device("bob", X25519PrivateKey.generate(), Ed25519PrivateKey.generate(), relay.client())
            for device in (alice, bob):
                device.relay.create_account(device.user_id)
                device.register(kms, key_id)

            envelope = seal_message(kms, alice, "bob", plaintext, "msg-1")
            alice.relay.send("bob", envelope, client_message_id="msg-1")
            stream = bob.relay.messages()
            message = next(stream)
            assert open_message(kms, bob, message.sender_user_id, message.envelope) == plaintext

            def relay_files() -> bytes:
                return b"".join(p.read_bytes() for p in sorted(relay.root.glob("relay.db*"))) + relay.log.read_bytes()

            secrets = [plaintext, *alice.raw_public_keys(), *bob.raw_public_keys()]
            while_stored = relay_files()
            assert envelope in while_stored  # the scan does see what the relay holds
            bob.relay.ack([message.message_id])
            stream.close()
            for device in (alice, bob):
                device.relay.close()
        assert relay.process.terminate() == 0
        after = relay_files()
        for name, held in (("while the message was stored", while_stored), ("after it was acknowledged", after)):
            for secret in secrets:
                for form in _forms(secret):
                    assert form not in held, f"the relay's files hold a secret {name}"
        assert b"account bob created" in relay.log.read_bytes()  # the scan read the real log
    finally:
        relay.process.kill()
