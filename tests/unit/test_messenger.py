"""Unit tests of client_sdk/messenger.py: the messaging logic against fakes of the KMS and the relay
(dicts and lists, no sockets). The cryptography is real; what the fakes stand in for is sealing
(the fake KMS binds a record to its user, version and key without encrypting it) and storage."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from client_sdk.device_keys import DeviceKeys
from client_sdk.messenger import (
    ENVELOPE_PREFIX,
    Messenger,
    ReceivedMessage,
    RejectedMessage,
    RejectReason,
    envelope_info,
    sign_envelope,
)
from client_sdk.messenger_policy import MessengerPolicy
from client_sdk.relay_types import DirectoryRecord, RelayAccount, RelayMessage, SendReceipt
from client_sdk.types import OpenedPublicKey, SealedPublicKey
from fake_clock import Clock
from foundation.errors import (
    AccountExistsError,
    AlreadyExistsError,
    CiphertextAuthenticationError,
    InvalidArgumentError,
    MalformedCiphertextError,
    PeerVersionDowngradeError,
    PermissionDeniedError,
    RecordVersionNotNewerError,
    RevisionConflictError,
    SealedRecordMismatchError,
    UnavailableError,
    UserNotFoundError,
)
from keyrelay.v1 import messaging_pb2

PASSPHRASE = "a long and private passphrase"
FAST = 2**14
IDLE = 0.05


# -- fakes ------------------------------------------------------------------------------------------


class FakeKms:
    """Seals by tagging the bundle with (key id, user id, version); opens only a record whose tag
    matches the names it travels under, like the KMS's AAD check."""

    def __init__(self) -> None:
        self.opens = 0
        self.calls: dict[str, int] = defaultdict(int)  # OpenPublicKey calls by the record's user
        self.fail_with: Exception | None = None
        self.refused_users: set[str] = set()  # records sealed under a key this credential may not use
        self.garbled_users: set[str] = set()  # records whose wrapped key is no KMS ciphertext

    def describe_key(self, key_id: str):
        return SimpleNamespace(key_id={"alias/directory": "key-1"}.get(key_id, key_id))

    def seal_public_key(self, key_id, user_id, bundle, bundle_version) -> SealedPublicKey:
        return SealedPublicKey(user_id, bundle_version, bundle, json.dumps([key_id, user_id, bundle_version]).encode())

    def open_public_key(self, sealed: SealedPublicKey) -> OpenedPublicKey:
        self.calls[sealed.user_id] += 1
        if self.fail_with is not None:
            raise self.fail_with
        if sealed.user_id in self.refused_users:
            raise PermissionDeniedError("this access point may not use key key-9")
        if sealed.user_id in self.garbled_users:
            raise MalformedCiphertextError("ciphertext blob is 17 bytes, shorter than any keyrelay ciphertext (49)")
        self.opens += 1
        key_id, user_id, version = json.loads(sealed.wrapped_dek)
        if (user_id, version) != (sealed.user_id, sealed.bundle_version):
            raise SealedRecordMismatchError("the sealed record does not open as that user and version")
        return OpenedPublicKey(sealed.sealed_bundle, key_id, 1)


class FakeRelayServer:
    """Accounts, directory and mailboxes, shared by the clients of every user."""

    def __init__(self) -> None:
        self.users: dict[str, str] = {}  # token -> user id
        self.records: dict[str, dict[int, DirectoryRecord]] = defaultdict(dict)
        self.mailboxes: dict[str, dict[str, RelayMessage]] = defaultdict(dict)
        self.client_ids: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.acked: list[str] = []
        self.arrived = threading.Condition()

    def client(self) -> "FakeRelay":
        return FakeRelay(self)

    def deliver(self, sender: str, recipient: str, envelope: bytes, client_message_id: str = "") -> str:
        """Store an envelope as if `sender` had sent it (what a forger, or a replay, can do)."""
        message = RelayMessage(
            uuid.uuid4().hex, sender, recipient, envelope, client_message_id or uuid.uuid4().hex,
            datetime.now(timezone.utc), None,
        )
        with self.arrived:
            self.mailboxes[recipient][message.message_id] = message
            self.arrived.notify_all()
        return message.message_id

    def pending(self, user: str) -> list[RelayMessage]:
        return list(self.mailboxes[user].values())


class FakeSubscription:
    """Delivers what the mailbox held at subscribe time and what arrives later, until cancelled."""

    def __init__(self, server: FakeRelayServer, user: str) -> None:
        self.server, self.user = server, user
        self.delivered: set[str] = set()
        self.cancelled = False

    def __iter__(self):
        return self

    def __next__(self) -> RelayMessage:
        with self.server.arrived:
            while not self.cancelled:
                for message in self.server.pending(self.user):
                    if message.message_id not in self.delivered:
                        self.delivered.add(message.message_id)
                        return message
                self.server.arrived.wait(0.01)
        raise StopIteration

    def cancel(self) -> None:
        self.cancelled = True


class FakeRelay:
    """RelayClient's methods that Messenger uses, on a FakeRelayServer."""

    def __init__(self, server: FakeRelayServer) -> None:
        self.server = server
        self.device_token: str | None = None

    @property
    def user(self) -> str:
        return self.server.users[self.device_token]

    def create_account(self, user_id: str) -> RelayAccount:
        if user_id in self.server.users.values():
            raise AccountExistsError(f"the user id {user_id!r} is taken")
        self.device_token = uuid.uuid4().hex
        self.server.users[self.device_token] = user_id
        return RelayAccount(user_id, self.device_token)

    def publish_record(self, sealed: SealedPublicKey, kms_key_id: str) -> DirectoryRecord:
        records = self.server.records[self.user]
        if records and max(records) >= sealed.bundle_version:
            raise RecordVersionNotNewerError("not newer")
        records[sealed.bundle_version] = DirectoryRecord(self.user, sealed.bundle_version, sealed, kms_key_id, None)
        return records[sealed.bundle_version]

    def get_record(self, user_id: str, record_version: int = 0) -> DirectoryRecord:
        records = self.server.records.get(user_id) or {}
        version = record_version or max(records, default=0)
        if version not in records:
            raise UserNotFoundError(f"{user_id!r} has no record version {record_version}")
        return records[version]

    def send(self, recipient: str, envelope: bytes, *, client_message_id: str) -> SendReceipt:
        key = (self.user, client_message_id)
        if key in self.server.client_ids:
            stored, message_id = self.server.client_ids[key]
            if stored != envelope:
                raise InvalidArgumentError("client_message_id was already used for a different message")
            return SendReceipt(message_id, client_message_id, datetime.now(timezone.utc), True)
        message_id = self.server.deliver(self.user, recipient, envelope, client_message_id)
        self.server.client_ids[key] = (envelope, message_id)
        return SendReceipt(message_id, client_message_id, datetime.now(timezone.utc), False)

    def subscribe(self) -> FakeSubscription:
        return FakeSubscription(self.server, self.user)

    def ack(self, message_ids) -> int:
        self.server.acked.extend(message_ids)
        with self.server.arrived:
            return sum(self.server.mailboxes[self.user].pop(i, None) is not None for i in message_ids)


# -- fixtures and helpers -----------------------------------------------------------------------------


@pytest.fixture
def server():
    return FakeRelayServer()


@pytest.fixture
def kms():
    return FakeKms()


@pytest.fixture
def users(tmp_path, server, kms):
    """register(user, kem=...) -> a Messenger of a new user on the shared fakes."""

    def register(user: str, kem: str = "x25519", **options) -> Messenger:
        options.setdefault("scrypt_n", FAST)
        return Messenger.register(
            kms, server.client(), user, key_id="alias/directory", device_file=tmp_path / f"{user}.keys",
            passphrase=PASSPHRASE, kem=kem, **options,
        )

    return register


def drain(messenger: Messenger, rejected: list | None = None) -> list[ReceivedMessage]:
    on_reject = rejected.append if rejected is not None else None
    return list(messenger.receive(on_reject=on_reject, idle_timeout=IDLE))


def envelope_body(envelope: bytes) -> messaging_pb2.EnvelopeBody:
    return messaging_pb2.EnvelopeBody.FromString(messaging_pb2.SignedEnvelope.FromString(envelope).body)


def forge(sender: Messenger, recipient_key: Messenger, *, recipient: str, claimed_sender: str | None = None,
          plaintext: bytes = b"forged") -> bytes:
    """An envelope signed by `sender`'s key and HPKE-sealed to `recipient_key`'s newest key, with
    `recipient` and `claimed_sender` written into the body."""
    pair = recipient_key.device.key_pair(recipient_key.bundle_version)
    signer = sender.device.key_pair(sender.bundle_version)
    body = messaging_pb2.EnvelopeBody(
        sender_user_id=claimed_sender or sender.user_id, recipient_user_id=recipient, message_id=uuid.uuid4().hex,
        sender_bundle_version=signer.bundle_version, recipient_bundle_version=pair.bundle_version,
        kem=pair.kem.algorithm,
    )
    body.send_time.FromDatetime(datetime.now(timezone.utc))
    public = pair.kem.public_key(pair.kem_public_bytes())
    body.hpke_ciphertext = pair.kem.suite.encrypt(plaintext, public, info=envelope_info(body))
    return sign_envelope(body, signer)


# -- register, send, receive --------------------------------------------------------------------------


@pytest.mark.parametrize("alice_kem, bob_kem", [("mlkem768-x25519", "x25519"), ("x25519", "mlkem768-x25519")])
def test_round_trip_with_both_kems(users, server, alice_kem, bob_kem):
    alice, bob = users("alice", alice_kem), users("bob", bob_kem)
    receipt = alice.send("bob", b"hello bob", message_id="m-1")
    assert receipt.client_message_id == "m-1" and not receipt.duplicate
    bob.send("alice", b"hello alice")

    [got] = drain(bob)
    assert (got.sender, got.message_id, got.plaintext) == ("alice", "m-1", b"hello bob")
    assert (got.sender_bundle_version, got.recipient_bundle_version) == (1, 1)
    assert got.relay_message_id == receipt.message_id
    assert abs((datetime.now(timezone.utc) - got.send_time).total_seconds()) < 60
    body = envelope_body(server.client_ids[("alice", "m-1")][0])
    assert body.kem == messaging_pb2.KemAlgorithm.Value(
        "KEM_ALGORITHM_MLKEM768_X25519" if bob_kem != "x25519" else "KEM_ALGORITHM_X25519"
    )
    assert [m.plaintext for m in drain(alice)] == [b"hello alice"]
    assert server.pending("bob") == [] and server.pending("alice") == []  # acknowledged


def test_register_seals_the_bundle_under_the_resolved_key_and_publishes_version_1(users, server, tmp_path):
    alice = users("alice", "mlkem768-x25519")
    record = server.records["alice"][1]
    assert record.kms_key_id == "key-1" and alice.device.kms_key_id == "key-1"  # the alias, resolved
    bundle = messaging_pb2.PublicKeyBundle.FromString(record.sealed.sealed_bundle)
    pair = alice.device.key_pair(1)
    assert (bundle.user_id, bundle.bundle_version) == ("alice", 1)
    assert bundle.kem == messaging_pb2.KEM_ALGORITHM_MLKEM768_X25519
    assert (bundle.kem_public_key, bundle.signing_public_key) == (pair.kem_public_bytes(), pair.signing_public_bytes())
    assert len(bundle.kem_public_key) == 1216 and bundle.HasField("create_time")
    assert alice.bundle_version == 1 and DeviceKeys.load(tmp_path / "alice.keys", PASSPHRASE).published_version == 1
    assert "alice" in repr(alice) and alice.device.device_token not in repr(alice)


def test_register_refuses_an_existing_device_file_before_creating_anything(users, server, tmp_path):
    (tmp_path / "bob.keys").write_text("precious")
    with pytest.raises(AlreadyExistsError):
        users("bob")
    assert "bob" not in server.users.values() and (tmp_path / "bob.keys").read_text() == "precious"
    users("carol")
    with pytest.raises(AccountExistsError):
        Messenger.register(FakeKms(), server.client(), "carol", key_id="k", device_file=tmp_path / "c2.keys",
                           passphrase=PASSPHRASE, scrypt_n=FAST)
    assert not (tmp_path / "c2.keys").exists()


def test_open_with_the_right_passphrase_only(users, server, kms, tmp_path):
    users("alice")
    relay = server.client()
    with pytest.raises(CiphertextAuthenticationError, match="wrong passphrase"):
        Messenger.open(kms, relay, tmp_path / "alice.keys", "not it")
    assert relay.device_token is None
    alice = Messenger.open(kms, relay, tmp_path / "alice.keys", PASSPHRASE)
    assert relay.user == "alice" and alice.user_id == "alice"


def test_send_is_idempotent_per_message_id(users, server):
    alice, bob = users("alice"), users("bob")
    first = alice.send("bob", b"once", message_id="m-1")
    again = alice.send("bob", b"once", message_id="m-1")  # e.g. after a timeout: the same envelope again
    assert again.duplicate and again.message_id == first.message_id
    with pytest.raises(InvalidArgumentError, match="different message"):
        alice.send("bob", b"something else", message_id="m-1")
    assert [m.plaintext for m in drain(bob)] == [b"once"]


def test_send_refuses_bad_arguments_before_any_call(users, kms):
    alice = users("alice")
    opens = kms.opens
    with pytest.raises(InvalidArgumentError):
        alice.send("bob", b"x", message_id="has space")
    with pytest.raises(TypeError):
        alice.send("bob", "text, not bytes")
    with pytest.raises(UserNotFoundError):
        alice.send("nobody", b"x")
    assert kms.opens == opens


# -- rejections ---------------------------------------------------------------------------------------


@pytest.fixture
def trio(users):
    return users("alice"), users("bob", "mlkem768-x25519"), users("mallory")


def rejections_of(bob: Messenger) -> tuple[list[ReceivedMessage], list[RejectedMessage]]:
    rejected: list[RejectedMessage] = []
    return drain(bob, rejected), rejected


def test_a_tampered_signature_is_rejected_reported_and_acknowledged(trio, server):
    alice, bob, _ = trio
    alice.send("bob", b"genuine", message_id="m-1")
    envelope = server.client_ids[("alice", "m-1")][0]
    server.mailboxes["bob"].clear()
    signed = messaging_pb2.SignedEnvelope.FromString(envelope)
    signed.signature = bytes([signed.signature[0] ^ 1]) + signed.signature[1:]
    relay_id = server.deliver("alice", "bob", signed.SerializeToString())

    received, rejected = rejections_of(bob)
    assert received == []
    assert [(r.sender, r.relay_message_id, r.reason) for r in rejected] == [
        ("alice", relay_id, RejectReason.BAD_SIGNATURE)
    ]
    assert relay_id in server.acked and server.pending("bob") == []


def test_forgeries_are_rejected_for_what_they_are(trio, server, kms):
    alice, bob, mallory = trio
    cases = {
        # Mallory signs a body claiming to come from Alice.
        server.deliver("mallory", "bob", forge(mallory, bob, recipient="bob", claimed_sender="alice")):
            RejectReason.SENDER_MISMATCH,
        # Alice's genuine envelope, re-posted by Mallory: it does not verify with Mallory's key.
        server.deliver("mallory", "bob", forge(alice, bob, recipient="bob")): RejectReason.BAD_SIGNATURE,
        # Sealed to Mallory's own key but sent to Bob.
        server.deliver("mallory", "bob", forge(mallory, mallory, recipient="bob")): RejectReason.UNKNOWN_RECIPIENT_KEY,
        # A valid envelope for Carol (here: for Alice), dropped into Bob's mailbox.
        server.deliver("mallory", "bob", forge(mallory, alice, recipient="alice")): RejectReason.NOT_ADDRESSED_TO_US,
        server.deliver("mallory", "bob", b"\xff\xfe not a protobuf"): RejectReason.MALFORMED,
    }
    received, rejected = rejections_of(bob)
    assert received == []
    assert {r.relay_message_id: r.reason for r in rejected} == cases
    assert all("forged" not in r.detail for r in rejected)


def test_a_payload_sealed_to_another_key_of_the_same_kem_is_undecryptable(trio, server):
    alice, bob, mallory = trio
    mallory.reregister("mlkem768-x25519")  # same KEM as Bob's, so only the decryption can tell
    envelope = forge(mallory, mallory, recipient="bob")
    body = envelope_body(envelope)
    body.recipient_bundle_version = 1  # claims Bob's version 1; re-signed, so the signature holds
    relay_id = server.deliver("mallory", "bob", sign_envelope(body, mallory.device.key_pair(2)))
    received, rejected = rejections_of(bob)
    assert received == [] and [(r.relay_message_id, r.reason) for r in rejected] == [
        (relay_id, RejectReason.UNDECRYPTABLE)
    ]


def test_altered_header_fields_break_the_hpke_binding(trio, server):
    alice, bob, _ = trio
    alice.send("bob", b"bound", message_id="m-1")
    body = envelope_body(server.pending("bob")[0].envelope)
    server.mailboxes["bob"].clear()
    body.message_id = "m-2"  # re-signed, so only the HPKE `info` binding can tell
    server.deliver("alice", "bob", sign_envelope(body, alice.device.key_pair(1)))
    _, rejected = rejections_of(bob)
    assert [r.reason for r in rejected] == [RejectReason.UNDECRYPTABLE]


def test_unknown_sender_version_and_unknown_sender_are_rejected(trio, server):
    _, bob, mallory = trio
    body = envelope_body(forge(mallory, bob, recipient="bob"))
    body.sender_bundle_version = 7
    server.deliver("mallory", "bob", sign_envelope(body, mallory.device.key_pair(1)))
    _, rejected = rejections_of(bob)
    assert [r.reason for r in rejected] == [RejectReason.UNKNOWN_SENDER_KEY]
    assert "version 7" in rejected[0].detail


def test_a_sender_record_sealed_for_another_user_is_rejected_on_receive(trio, server):
    alice, bob, mallory = trio
    envelope = forge(mallory, bob, recipient="bob")
    # The directory serves Mallory's sealed record as Alice's version 1.
    server.records["alice"][1] = replace(server.records["mallory"][1], user_id="alice")
    server.deliver("alice", "bob", envelope)
    _, rejected = rejections_of(bob)
    assert [r.reason for r in rejected] == [RejectReason.SENDER_RECORD_INVALID]


@pytest.mark.parametrize("swap", ["whole-record", "renamed-sealed-record", "bundle-of-another-user", "other-kms-key"])
def test_send_refuses_a_record_that_is_not_the_recipients(trio, server, kms, swap):
    alice, bob, mallory = trio
    records = server.records
    if swap == "whole-record":  # Mallory's record, served as Bob's newest
        records["bob"][2] = records["mallory"][1]
    elif swap == "renamed-sealed-record":  # ... with its names changed to Bob's: the KMS refuses it
        theirs = records["mallory"][1]
        records["bob"][2] = replace(theirs, user_id="bob", record_version=2,
                                    sealed=replace(theirs.sealed, user_id="bob", bundle_version=2))
    elif swap == "bundle-of-another-user":  # Mallory's bundle, sealed for "bob" by a messaging credential
        sealed = kms.seal_public_key("key-1", "bob", records["mallory"][1].sealed.sealed_bundle, 2)
        records["bob"][2] = DirectoryRecord("bob", 2, sealed, "key-1", None)
    else:  # sealed under another KMS key than the record names
        records["bob"][2] = replace(records["bob"][1], record_version=2, kms_key_id="key-2",
                                    sealed=kms.seal_public_key("key-1", "bob", records["bob"][1].sealed.sealed_bundle, 2))
    with pytest.raises(SealedRecordMismatchError):
        alice.send("bob", b"for bob only")
    assert server.pending("bob") == [] and server.pending("mallory") == []


def test_a_sender_record_the_kms_refuses_is_reported_and_left_in_the_mailbox_once(trio, server, kms, tmp_path):
    alice, bob, mallory = trio
    kept = server.deliver("mallory", "bob", forge(mallory, bob, recipient="bob"))
    alice.send("bob", b"behind it", message_id="m-1")
    kms.refused_users.add("mallory")
    received, rejected = rejections_of(bob)
    assert [m.plaintext for m in received] == [b"behind it"]  # not held up
    assert [(r.relay_message_id, r.reason, r.acknowledged) for r in rejected] == [
        (kept, RejectReason.SENDER_KEY_REFUSED, False)
    ]
    assert "another try (delivery 1 of 2)" in rejected[0].detail
    assert [m.message_id for m in server.pending("bob")] == [kept]  # not lost either
    kms.refused_users.clear()  # the credential is mended; the next run of the receiver opens it
    again = Messenger.open(kms, server.client(), tmp_path / "bob.keys", PASSPHRASE)
    assert [m.plaintext for m in drain(again)] == [b"forged"]


def test_poison_costs_one_kms_call_per_sender_version_and_is_dropped_at_the_second_delivery(trio, server, kms):
    alice, bob, mallory = trio
    kms.refused_users.add("mallory")
    junk = {server.deliver("mallory", "bob", forge(mallory, bob, recipient="bob")) for _ in range(50)}
    first = rejections_of(bob)[1]
    second = rejections_of(bob)[1]
    assert {r.relay_message_id for r in first} == {r.relay_message_id for r in second} == junk
    assert not any(r.acknowledged for r in first) and all(r.acknowledged for r in second)
    assert all("dropped after 2 deliveries" in r.detail for r in second)
    assert server.pending("bob") == [] and kms.calls["mallory"] == 1


def test_refused_deliveries_are_counted_across_restarts(trio, server, kms, tmp_path):
    alice, bob, mallory = trio
    kms.refused_users.add("mallory")
    relay_id = server.deliver("mallory", "bob", forge(mallory, bob, recipient="bob"))
    assert [r.acknowledged for r in rejections_of(bob)[1]] == [False]
    again = Messenger.open(kms, server.client(), tmp_path / "bob.keys", PASSPHRASE)  # e.g. the next CLI run
    assert [(r.relay_message_id, r.acknowledged) for r in rejections_of(again)[1]] == [(relay_id, True)]
    assert server.pending("bob") == []


def test_a_refused_record_is_asked_for_again_after_the_refusal_cache_time(users, server, kms):
    clock = Clock()
    bob = users("bob", clock=clock, policy=MessengerPolicy(refused_deliveries=3, refusal_cache_seconds=60))
    mallory = users("mallory")
    kms.refused_users.add("mallory")
    server.deliver("mallory", "bob", forge(mallory, bob, recipient="bob"))
    rejections_of(bob)
    rejections_of(bob)
    assert kms.calls["mallory"] == 1
    clock.advance(61)
    kms.refused_users.clear()
    assert [m.plaintext for m in drain(bob)] == [b"forged"] and kms.calls["mallory"] == 2


def test_a_record_that_is_no_sealed_record_is_rejected_once_without_stopping_receive(trio, server, kms):
    alice, bob, mallory = trio
    kms.garbled_users.add("mallory")
    for _ in range(5):
        server.deliver("mallory", "bob", forge(mallory, bob, recipient="bob"))
    alice.send("bob", b"behind it")
    received, rejected = rejections_of(bob)
    assert [m.plaintext for m in received] == [b"behind it"]
    assert {(r.reason, r.acknowledged) for r in rejected} == {(RejectReason.SENDER_RECORD_INVALID, True)}
    assert "not a record the KMS can open" in rejected[0].detail
    assert server.pending("bob") == [] and kms.calls["mallory"] == 1


def test_rejections_are_logged_without_content_by_default(trio, server, caplog):
    _, bob, mallory = trio
    server.deliver("mallory", "bob", forge(mallory, mallory, recipient="bob", plaintext=b"SECRET-CONTENT"))
    with caplog.at_level(logging.WARNING, logger="client_sdk.messenger"):
        assert list(bob.receive(idle_timeout=IDLE)) == []
    assert "rejected message" in caplog.text and "unknown-recipient-key" in caplog.text
    assert "SECRET-CONTENT" not in caplog.text and PASSPHRASE not in caplog.text


# -- duplicates and acknowledgement -------------------------------------------------------------------


def test_duplicates_are_dropped_and_acknowledged(trio, server):
    alice, bob, _ = trio
    alice.send("bob", b"only once", message_id="m-1")
    envelope = server.pending("bob")[0].envelope
    repeat = server.deliver("alice", "bob", envelope)  # the same envelope stored again (a replay)
    assert [m.plaintext for m in drain(bob)] == [b"only once"]
    assert repeat in server.acked and server.pending("bob") == []


def test_taken_ids_survive_a_restart(trio, server, kms, tmp_path):
    alice, bob, _ = trio
    alice.send("bob", b"once", message_id="m-1")
    envelope = server.pending("bob")[0].envelope
    assert len(drain(bob)) == 1
    server.deliver("alice", "bob", envelope)  # redelivered, e.g. its ack was lost
    again = Messenger.open(kms, server.client(), tmp_path / "bob.keys", PASSPHRASE)  # a new process
    assert drain(again) == [] and server.pending("bob") == []


def test_a_message_is_acknowledged_only_after_the_application_took_it(trio, server):
    alice, bob, _ = trio
    for n in range(3):
        alice.send("bob", f"message {n}".encode(), message_id=f"m-{n}")
    ids = [m.message_id for m in server.pending("bob")]

    stream = bob.receive(idle_timeout=IDLE)
    first = next(stream)
    assert first.plaintext == b"message 0"
    assert server.acked == []  # held by the application, not yet taken: a crash now redelivers it
    stream.close()  # the application has it (and stops): acknowledged, the rest is not
    assert server.acked == [ids[0]]
    assert [m.message_id for m in server.pending("bob")] == ids[1:]

    assert [m.plaintext for m in drain(bob)] == [b"message 1", b"message 2"]
    assert sorted(server.acked) == sorted(ids) and server.pending("bob") == []


def test_a_kms_outage_raises_and_leaves_the_message_in_the_mailbox(trio, server, kms):
    alice, bob, _ = trio
    alice.send("bob", b"taken", message_id="m-1")
    drain(bob)
    alice.reregister()  # bob must open alice's version 2 for the next one
    alice.send("bob", b"waits", message_id="m-2")
    kms.fail_with = UnavailableError("the KMS is restarting")
    with pytest.raises(UnavailableError):
        drain(bob)
    assert [m.client_message_id for m in server.pending("bob")] == ["m-2"]
    kms.fail_with = None
    assert [m.plaintext for m in drain(bob)] == [b"waits"]


def test_follow_waits_for_new_messages(trio, server):
    alice, bob, _ = trio
    stream = bob.receive(follow=True)
    threading.Timer(0.3, lambda: alice.send("bob", b"later")).start()
    started = time.monotonic()
    got = next(stream)
    assert got.plaintext == b"later" and time.monotonic() - started >= 0.25
    stream.close()
    assert server.pending("bob") == []


# -- re-registration and the key cache ----------------------------------------------------------------


def test_after_reregistration_the_next_message_uses_the_new_key_and_old_ones_still_open(trio, server, kms):
    alice, bob, _ = trio
    alice.send("bob", b"to version 1", message_id="m-1")  # in flight across the rotation
    assert bob.reregister("x25519") == 2
    assert server.records["bob"][2].sealed.bundle_version == 2 and bob.device.bundle_versions == [1, 2]

    alice.send("bob", b"to version 2", message_id="m-2")
    assert envelope_body(server.client_ids[("alice", "m-2")][0]).recipient_bundle_version == 2
    got = {m.message_id: m for m in drain(bob)}
    assert got["m-1"].plaintext == b"to version 1" and got["m-1"].recipient_bundle_version == 1
    assert got["m-2"].plaintext == b"to version 2" and got["m-2"].recipient_bundle_version == 2

    bob.send("alice", b"signed with version 2")
    [reply] = drain(alice)
    assert reply.sender_bundle_version == 2 and reply.plaintext == b"signed with version 2"


def test_a_receiver_takes_in_keys_that_another_process_of_the_device_made(trio, server, kms, tmp_path):
    alice, bob, _ = trio
    other = Messenger.open(kms, server.client(), tmp_path / "bob.keys", PASSPHRASE)  # e.g. the CLI
    assert other.reregister() == 2
    alice.send("bob", b"to the key the other process made")
    [got] = drain(bob)
    assert got.recipient_bundle_version == 2 and bob.device.bundle_versions == [1, 2]


def test_opened_bundles_are_cached_until_the_version_changes_or_the_ttl_passes(tmp_path, server, kms):
    clock = Clock()

    def register(user):
        return Messenger.register(kms, server.client(), user, key_id="key-1", device_file=tmp_path / user,
                                  passphrase=PASSPHRASE, kem="x25519", scrypt_n=FAST, clock=clock, cache_ttl=60)

    alice, bob = register("alice"), register("bob")
    opens = kms.opens
    alice.send("bob", b"1")
    alice.send("bob", b"2")
    assert kms.opens == opens + 1  # opened once, then from the cache
    bob.reregister()
    alice.send("bob", b"3")
    assert kms.opens == opens + 2  # the version changed: opened again at once, not after the TTL
    clock.advance(61)
    alice.send("bob", b"4")
    assert kms.opens == opens + 3  # the TTL passed


def test_publish_after_a_crash_accepts_its_own_record_and_refuses_a_strangers(users, server, kms, tmp_path):
    alice = users("alice")
    device = alice.device
    device.add_key_pair()  # version 2 saved ...
    pair = device.key_pair(2)
    sealed = kms.seal_public_key("key-1", "alice", pair.public_bundle("alice").SerializeToString(), 2)
    relay = server.client()
    relay.device_token = device.device_token
    relay.publish_record(sealed, "key-1")  # ... and published, then the process died before noting it
    again = Messenger.open(kms, server.client(), tmp_path / "alice.keys", PASSPHRASE)
    assert again.bundle_version == 1 and again.publish() == 2 and again.bundle_version == 2

    again.device.add_key_pair()  # version 3, but someone else published a version 3 first
    stranger = users("stranger").device.key_pair(1)
    forged = kms.seal_public_key("key-1", "alice", stranger.public_bundle("alice").SerializeToString(), 3)
    relay.publish_record(forged, "key-1")
    with pytest.raises(RevisionConflictError, match="did not make"):
        again.publish()
    assert again.bundle_version == 2


def test_signature_prefix_and_info_follow_the_proto(trio, server):
    alice, bob, _ = trio
    alice.send("bob", b"x", message_id="m-1")
    signed = messaging_pb2.SignedEnvelope.FromString(server.pending("bob")[0].envelope)
    key = alice.device.key_pair(1).signing_key.public_key()
    key.verify(signed.signature, b"keyrelay.v1.envelope" + signed.body)
    assert ENVELOPE_PREFIX == b"keyrelay.v1.envelope"
    body = messaging_pb2.EnvelopeBody.FromString(signed.body)
    assert envelope_info(body) == b"keyrelay.v1.envelope\nalice\nbob\nm-1\n1\n1"


# -- the policy: rollback, superseded keys, replay and age ---------------------------------------------


class WallClock:
    """Unix seconds that the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def envelope_sent_at(sender: Messenger, recipient: Messenger, sent: datetime, version: int | None = None) -> bytes:
    body = envelope_body(forge(sender, recipient, recipient=recipient.user_id))
    body.send_time.FromDatetime(sent)
    body.sender_bundle_version = version or sender.bundle_version
    pair = recipient.device.key_pair(recipient.bundle_version)
    body.hpke_ciphertext = pair.kem.suite.encrypt(
        b"timed", pair.kem.public_key(pair.kem_public_bytes()), info=envelope_info(body)
    )
    return sign_envelope(body, sender.device.key_pair(version or sender.bundle_version))


def test_a_directory_serving_an_older_record_as_the_newest_is_refused_for_good(users, server, kms, tmp_path):
    alice, bob = users("alice"), users("bob")
    bob.reregister("mlkem768-x25519")
    alice.send("bob", b"to version 2")
    newest = server.records["bob"].pop(2)  # the relay now serves version 1 as bob's newest
    with pytest.raises(PeerVersionDowngradeError, match="version 1 as 'bob'.*seen their version 2"):
        alice.send("bob", b"refused")
    again = Messenger.open(kms, server.client(), tmp_path / "alice.keys", PASSPHRASE)
    with pytest.raises(PeerVersionDowngradeError):
        again.send("bob", b"refused after a restart too")
    server.records["bob"][2] = newest
    alice.send("bob", b"fine again")
    assert [m.plaintext for m in drain(bob)] == [b"to version 2", b"fine again"]


def test_versions_seen_by_two_processes_of_a_device_are_merged(users, server, kms, tmp_path):
    alice, bob, carol = users("alice"), users("bob"), users("carol")
    bob.reregister()
    carol.reregister()
    other = Messenger.open(kms, server.client(), tmp_path / "alice.keys", PASSPHRASE)  # e.g. the CLI
    alice.send("bob", b"to bob's version 2")
    other.send("carol", b"to carol's version 2")  # saved without losing what alice's process saw
    for records in (server.records["bob"], server.records["carol"]):
        del records[2]
    later = Messenger.open(kms, server.client(), tmp_path / "alice.keys", PASSPHRASE)
    for user in ("bob", "carol"):
        with pytest.raises(PeerVersionDowngradeError):
            later.send(user, b"refused")


def test_a_superseded_signing_key_is_accepted_for_the_grace_period_only(users, server, kms, tmp_path):
    clock = WallClock()
    alice, bob = users("alice"), users("bob", wall_clock=clock)
    alice.send("bob", b"in flight, signed by version 1", message_id="m-1")
    old = server.pending("bob")[0].envelope
    server.mailboxes["bob"].clear()
    alice.reregister()
    alice.send("bob", b"signed by version 2")
    assert [m.sender_bundle_version for m in drain(bob)] == [2]

    clock.offset = 23 * 3600
    server.deliver("alice", "bob", old)
    assert [(m.sender_bundle_version, m.message_id) for m in drain(bob)] == [(1, "m-1")]

    clock.offset = 24 * 3600 + 1
    late = server.deliver("alice", "bob", envelope_sent_at(alice, bob, datetime.now(timezone.utc), version=1))
    for receiver in (bob, Messenger.open(kms, server.client(), tmp_path / "bob.keys", PASSPHRASE, wall_clock=clock)):
        received, rejected = rejections_of(receiver)
        assert received == [] and [(r.relay_message_id, r.reason) for r in rejected] == [
            (late, RejectReason.SUPERSEDED_SENDER_VERSION)
        ]
        assert "version 1, which their version 2 replaced" in rejected[0].detail
        late = server.deliver("alice", "bob", envelope_sent_at(alice, bob, datetime.now(timezone.utc), version=1))


def test_a_repeat_under_the_same_relay_id_is_dropped_quietly_and_under_another_reported(trio, server):
    alice, bob, _ = trio
    alice.send("bob", b"once", message_id="m-1")
    [original] = server.pending("bob")
    assert len(drain(bob)) == 1
    server.mailboxes["bob"][original.message_id] = original  # its acknowledgement was lost
    received, rejected = rejections_of(bob)
    assert received == [] and rejected == [] and server.pending("bob") == []

    replay = server.deliver("alice", "bob", original.envelope)  # stored again: a replay
    received, rejected = rejections_of(bob)
    assert received == [] and [(r.relay_message_id, r.reason, r.acknowledged) for r in rejected] == [
        (replay, RejectReason.REPLAYED, True)
    ]
    assert "'m-1' was received already" in rejected[0].detail and server.pending("bob") == []


def test_envelopes_older_than_the_ttl_or_from_the_future_are_refused(users, server):
    clock = WallClock()
    policy = MessengerPolicy(message_ttl_seconds=3600, clock_skew_seconds=60)
    alice, bob = users("alice"), users("bob", wall_clock=clock, policy=policy)
    now = datetime.now(timezone.utc)
    cases = {
        server.deliver("alice", "bob", envelope_sent_at(alice, bob, now - timedelta(minutes=62))):
            (RejectReason.ENVELOPE_TOO_OLD, "longer than the message TTL of 60 minutes"),
        server.deliver("alice", "bob", envelope_sent_at(alice, bob, now + timedelta(minutes=5))):
            (RejectReason.ENVELOPE_FROM_FUTURE, "5 minutes in the future"),
    }
    fine = server.deliver("alice", "bob", envelope_sent_at(alice, bob, now - timedelta(minutes=59)))
    received, rejected = rejections_of(bob)
    assert [m.relay_message_id for m in received] == [fine]
    assert {r.relay_message_id: r.reason for r in rejected} == {k: v[0] for k, v in cases.items()}
    for r in rejected:
        assert cases[r.relay_message_id][1] in r.detail


@pytest.mark.parametrize("seconds", [2**40, -(2**40)])
def test_a_send_time_out_of_any_calendar_is_malformed_not_a_crash(trio, server, seconds):
    alice, bob, _ = trio
    body = envelope_body(forge(alice, bob, recipient="bob"))
    body.send_time.seconds = seconds
    server.deliver("alice", "bob", sign_envelope(body, alice.device.key_pair(1)))
    alice.send("bob", b"behind it")
    received, rejected = rejections_of(bob)
    assert [m.plaintext for m in received] == [b"behind it"]
    assert [r.reason for r in rejected] == [RejectReason.MALFORMED]


def test_a_replay_of_a_message_the_seen_limit_forgot_is_too_old(users, server):
    alice, bob = users("alice"), users("bob", policy=MessengerPolicy(seen_limit=2))
    base = datetime.now(timezone.utc) - timedelta(minutes=10)
    envelopes = {}
    for n in (1, 0, 2):  # stored out of send order: the oldest sent is not the first stored
        envelope = envelope_sent_at(alice, bob, base + timedelta(minutes=n))
        envelopes[server.deliver("alice", "bob", envelope)] = (n, envelope)
    assert len(drain(bob)) == 3
    by_age = [envelope for _, envelope in sorted(envelopes.values())]
    forgotten, remembered = server.deliver("alice", "bob", by_age[0]), server.deliver("alice", "bob", by_age[1])
    received, rejected = rejections_of(bob)
    assert received == []
    assert {r.relay_message_id: r.reason for r in rejected} == {
        forgotten: RejectReason.ENVELOPE_TOO_OLD, remembered: RejectReason.REPLAYED
    }
    too_old = next(r for r in rejected if r.relay_message_id == forgotten)
    assert "no longer remembers (it keeps 2 message ids)" in too_old.detail


def test_the_seen_list_of_an_earlier_sdk_is_taken_over(trio, server, kms, tmp_path):
    alice, bob, _ = trio
    alice.send("bob", b"once", message_id="m-1")
    envelope = server.pending("bob")[0].envelope
    server.mailboxes["bob"].clear()
    # What the SDK before this policy saved: the (sender, message id) pairs, format version 1.
    bob.device.save_seen([["alice", "m-1"]], 1)
    upgraded = Messenger.open(kms, server.client(), tmp_path / "bob.keys", PASSPHRASE)
    server.deliver("alice", "bob", envelope)
    received, rejected = rejections_of(upgraded)
    assert received == [] and rejected == [] and server.pending("bob") == []  # a repeat, dropped
    assert bob.device.load_seen()[0] == 2  # rewritten in the new format
