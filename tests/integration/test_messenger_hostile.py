"""The messenger against hostile senders and a hostile relay, on a real KMS and a real relay.

The KMS is `InProcessCluster` (real SoftHSM pools, nodes and gateway), the relay a real
`RelayServer` on port 0, both in this process. Between the messengers and that relay sits
`RelayDouble`: a real gRPC server of `RelayService` and `DirectoryService` that forwards every call
to the real relay but can, on the test's word, answer GetRecord with an older record of a user
than the newest, or slip extra envelopes (replays, or envelopes signed with a key the user rotated
away from) into a user's Subscribe stream, under relay message ids of its own: what a relay that
has been taken over can do.

- Poison: hostile senders, whose directory records name a KMS key that does not exist or that
  the receiver's credential may not use, send 500 envelopes. They cost one OpenPublicKey per
  (sender, record version), counted both by a wrapper around the receiver's `KmsClient` and in
  the gateway's audit log, and the mailbox is empty after two receives.
- Rollback: after a user has seen a peer's version 2, the relay serving version 1 as the newest
  is refused (`PEER_VERSION_DOWNGRADE`), also by a new `Messenger` on the same device file.
- A signature by a sender's superseded version is accepted during the grace period after the
  receiver first saw the newer one, and refused (`superseded-sender-version`) after it.
- A replay of a taken envelope is refused as `replayed` inside the window (also after a restart)
  and as `envelope-too-old` once its send time is older than the message TTL.

Reasons are compared by value, so the module runs (and fails) on code without the policy.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from concurrent import futures
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import grpc
import pytest

from client_sdk import KeyrelayError, KmsClient, RelayClient
from client_sdk.messenger import Messenger, envelope_info, sign_envelope
from client_sdk.types import SealedPublicKey
from foundation.blob_formats import encode_header
from inprocess_cluster import InProcessCluster
from keyrelay.v1 import directory_pb2, directory_pb2_grpc, messaging_pb2, relay_pb2, relay_pb2_grpc
from loop_thread import LoopThread
from relay.config import RateLimitConfig, RelayConfig, StoreConfig
from relay.server import RelayServer

PASSPHRASE = "a passphrase only the test knows"
FAST_SCRYPT = 2**14
SEALING_ALIAS = "alias/directory"
IDLE = 1.0
DAY = 24 * 3600.0


# -- the relay double ------------------------------------------------------------------------------


class RelayDouble(relay_pb2_grpc.RelayServiceServicer, directory_pb2_grpc.DirectoryServiceServicer):
    """Forwards RelayService and DirectoryService to the real relay at `upstream`; `stale` and
    `inject` make it lie the way a relay in an attacker's hands can."""

    def __init__(self, upstream: str) -> None:
        self._channel = grpc.insecure_channel(upstream)
        self._relay = relay_pb2_grpc.RelayServiceStub(self._channel)
        self._directory = directory_pb2_grpc.DirectoryServiceStub(self._channel)
        self._lock = threading.Lock()
        self._users: dict[str, str] = {}  # device token -> user id, learnt from CreateAccount
        self._stale: dict[str, int] = {}  # user -> the record version served as the newest
        self._injected: dict[str, dict[str, relay_pb2.RelayMessage]] = {}  # user -> relay id -> message
        self.delivered: dict[str, list[relay_pb2.RelayMessage]] = {}  # user -> what reached them
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        relay_pb2_grpc.add_RelayServiceServicer_to_server(self, self.server)
        directory_pb2_grpc.add_DirectoryServiceServicer_to_server(self, self.server)
        self.target = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def stop(self) -> None:
        self.server.stop(0)
        self._channel.close()

    # -- what the test makes it do --

    def stale(self, user: str, version: int) -> None:
        """Answer GetRecord(user) for the newest record with `user`'s record `version`."""
        self._stale[user] = version

    def inject(self, recipient: str, sender: str, envelope: bytes) -> str:
        """Deliver `envelope` to `recipient` as if `sender` had sent it, under a new relay id,
        at the start of each Subscribe stream until it is acknowledged."""
        message = relay_pb2.RelayMessage(
            message_id=uuid.uuid4().hex, sender_user_id=sender, recipient_user_id=recipient,
            envelope=envelope, client_message_id=uuid.uuid4().hex,
        )
        message.store_time.FromDatetime(datetime.now(timezone.utc))
        with self._lock:
            self._injected.setdefault(recipient, {})[message.message_id] = message
        return message.message_id

    def pending_injected(self, recipient: str) -> list[str]:
        with self._lock:
            return list(self._injected.get(recipient, {}))

    # -- forwarding --

    @staticmethod
    def _forward(call, request, context):
        metadata = [(k, v) for k, v in context.invocation_metadata() if k == "authorization"]
        try:
            return call(request, metadata=metadata, timeout=30)
        except grpc.RpcError as exc:
            context.set_trailing_metadata(exc.trailing_metadata() or ())
            context.abort(exc.code(), exc.details())

    def _user(self, context) -> str | None:
        token = dict(context.invocation_metadata()).get("authorization", "").removeprefix("Bearer ")
        with self._lock:
            return self._users.get(token)

    def CreateAccount(self, request, context):
        response = self._forward(self._relay.CreateAccount, request, context)
        with self._lock:
            self._users[response.device_token] = response.user_id
        return response

    def Send(self, request, context):
        return self._forward(self._relay.Send, request, context)

    def Ack(self, request, context):
        user = self._user(context)
        with self._lock:
            for message_id in request.message_ids:
                self._injected.get(user, {}).pop(message_id, None)
        return self._forward(self._relay.Ack, request, context)

    def Subscribe(self, request, context):
        user = self._user(context)
        with self._lock:
            injected = list(self._injected.get(user, {}).values())
        for message in injected:
            yield relay_pb2.SubscribeResponse(message=message)
        metadata = [(k, v) for k, v in context.invocation_metadata() if k == "authorization"]
        call = self._relay.Subscribe(request, metadata=metadata)
        context.add_callback(call.cancel)
        try:
            for response in call:
                with self._lock:
                    self.delivered.setdefault(user, []).append(response.message)
                yield response
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                context.set_trailing_metadata(exc.trailing_metadata() or ())
                context.abort(exc.code(), exc.details())

    def PublishRecord(self, request, context):
        return self._forward(self._directory.PublishRecord, request, context)

    def GetRecord(self, request, context):
        stale = self._stale.get(request.user_id)
        if request.record_version == 0 and stale:
            request = directory_pb2.GetRecordRequest(user_id=request.user_id, record_version=stale)
        return self._forward(self._directory.GetRecord, request, context)


# -- the world -------------------------------------------------------------------------------------


class CountingKms:
    """The messenger's KMS client, counting OpenPublicKey calls and forwarding all to the real one."""

    def __init__(self, kms: KmsClient) -> None:
        self._kms = kms
        self.opens: dict[str, int] = {}  # user id of the record -> calls

    def open_public_key(self, sealed, **kwargs):
        self.opens[sealed.user_id] = self.opens.get(sealed.user_id, 0) + 1
        return self._kms.open_public_key(sealed, **kwargs)

    def __getattr__(self, name):
        return getattr(self._kms, name)


@dataclass
class World:
    cluster: InProcessCluster
    relay_target: str
    double: RelayDouble
    messaging_point: str  # the access point every user's KMS credential belongs to
    kms: KmsClient
    foreign_key_id: str  # a key of another tenant, which acme's credential may not use

    def relay(self, through_double: bool = True) -> RelayClient:
        return RelayClient(self.double.target if through_double else self.relay_target, timeout=30, retry_seconds=5)

    def register(self, tmp_path, name: str, kem: str = "x25519", **options) -> Messenger:
        user = f"{name}-{uuid.uuid4().hex[:8]}"
        return Messenger.register(
            options.pop("kms", self.kms), self.relay(), user, key_id=SEALING_ALIAS,
            device_file=tmp_path / f"{user}.keys", passphrase=PASSPHRASE, kem=kem, scrypt_n=FAST_SCRYPT, **options,
        )

    def reopen(self, messenger: Messenger, **options) -> Messenger:
        """The same device in a new process: a new Messenger on its device file."""
        return Messenger.open(options.pop("kms", self.kms), self.relay(), messenger.device.path, PASSPHRASE, **options)

    def audited_opens(self) -> int:
        """OpenPublicKey calls of the messaging access point in the gateway's audit log."""
        lines = self.cluster.audit.read_text().splitlines()
        return sum(
            1 for line in lines
            if (record := json.loads(line))["operation"] == "OpenPublicKey" and record["access_point"] == self.messaging_point
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory, softhsm):
    cluster = InProcessCluster(tmp_path_factory.mktemp("messenger-kms")).start()
    relay_thread = relay_server = double = kms = None
    try:
        with cluster.admin() as operator:
            admin_point = operator.create_access_point("acme", "acme-admin", ["admin"], ["*"]).access_point_id
            messaging = operator.create_access_point("acme", "acme-messaging", ["messaging-user"], [SEALING_ALIAS])
            globex_point = operator.create_access_point("globex", "globex-admin", ["admin"], ["*"]).access_point_id
            admin, globex = cluster.issue(admin_point, operator), cluster.issue(globex_point, operator)
            messaging_credential = cluster.issue(messaging.access_point_id, operator)
        target = cluster.zone_targets["public"]
        with KmsClient(target, credentials=admin.bundle, timeout=30) as acme:
            acme.create_key(description="directory sealing key", alias=SEALING_ALIAS)
        with KmsClient(target, credentials=globex.bundle, timeout=30) as other:
            foreign = other.create_key(description="another tenant's key").key_id
        root = tmp_path_factory.mktemp("messenger-relay")
        config = RelayConfig(listen="127.0.0.1:0", shutdown_grace_seconds=1, store=StoreConfig(str(root / "relay.db")),
                             rate_limit=RateLimitConfig(requests_per_second=0, account_creations_per_minute=0))
        relay_thread, relay_server = LoopThread(), RelayServer(config)
        relay_target = f"127.0.0.1:{relay_thread.call(relay_server.start())}"
        double = RelayDouble(relay_target)
        kms = KmsClient(target, credentials=messaging_credential.bundle, timeout=30)
        yield World(cluster, relay_target, double, messaging.access_point_id, kms, foreign)
    finally:
        if kms is not None:
            kms.close()
        if double is not None:
            double.stop()
        if relay_server is not None:
            relay_thread.stop(relay_server)
        cluster.stop()


def receive(messenger: Messenger) -> tuple[list, list]:
    """Drain the mailbox: (messages, rejections)."""
    rejected: list = []
    return list(messenger.receive(on_reject=rejected.append, idle_timeout=IDLE)), rejected


def mailbox_is_empty(world: World, messenger: Messenger) -> bool:
    """Whether the real relay holds nothing for `messenger`'s user (a Subscribe that stays silent)."""
    with RelayClient(world.relay_target, device_token=messenger.device.device_token, timeout=30) as relay:
        subscription = relay.subscribe(timeout=1.5)
        try:
            next(subscription)
        except (StopIteration, KeyrelayError):
            return True
        finally:
            subscription.cancel()
    return False


def forged_envelope(signer: Messenger, signer_version: int, recipient: Messenger, *, sent: datetime) -> bytes:
    """An envelope `signer`'s key of `signer_version` signed, to `recipient`'s newest key, sent at
    `sent`: what someone holding that (old) key can make."""
    pair = recipient.device.key_pair(recipient.bundle_version)
    body = messaging_pb2.EnvelopeBody(
        sender_user_id=signer.user_id, recipient_user_id=recipient.user_id, message_id=uuid.uuid4().hex,
        sender_bundle_version=signer_version, recipient_bundle_version=pair.bundle_version, kem=pair.kem.algorithm,
    )
    body.send_time.FromDatetime(sent)
    public = pair.kem.public_key(pair.kem_public_bytes())
    body.hpke_ciphertext = pair.kem.suite.encrypt(b"from an old key", public, info=envelope_info(body))
    return sign_envelope(body, signer.device.key_pair(signer_version))


class WallClock:
    """A wall clock the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def now(self) -> datetime:
        return datetime.fromtimestamp(self(), timezone.utc)


# -- poison ------------------------------------------------------------------------------------------


def _hostile_sender(world: World, name: str, sealed_under: str) -> RelayClient:
    """A relay account whose record version 1 is wrapped under `sealed_under`: a key id that
    exists nowhere, or another tenant's key. Made without the KMS (nobody checks what a record
    holds before a reader opens it)."""
    relay = world.relay(through_double=False)
    user = f"{name}-{uuid.uuid4().hex[:8]}"
    relay.create_account(user)
    wrapped_dek = encode_header(sealed_under, 1, b"\0" * 12) + b"\x42" * 48
    relay.publish_record(SealedPublicKey(user, 1, b"\x00" * 80, wrapped_dek), sealed_under)
    return relay


def _junk(sender: str, recipient: str) -> bytes:
    body = messaging_pb2.EnvelopeBody(
        sender_user_id=sender, recipient_user_id=recipient, message_id=uuid.uuid4().hex,
        sender_bundle_version=1, recipient_bundle_version=1, kem=messaging_pb2.KEM_ALGORITHM_X25519,
        hpke_ciphertext=b"junk",
    )
    body.send_time.FromDatetime(datetime.now(timezone.utc))
    return messaging_pb2.SignedEnvelope(body=body.SerializeToString(), signature=b"\0" * 64).SerializeToString()


def test_poison_envelopes_cost_one_kms_call_per_sender_version_and_leave_the_mailbox(world, tmp_path):
    counting = CountingKms(world.kms)
    bob = world.register(tmp_path, "bob", kms=counting)
    alice = world.register(tmp_path, "alice")
    hostile = [
        _hostile_sender(world, "mallory", str(uuid.uuid4())),  # a key that exists nowhere
        _hostile_sender(world, "trudy", world.foreign_key_id),  # another tenant's key
    ]
    alice.send(bob.user_id, b"genuine, before the flood")
    for n in range(500):
        sender = hostile[n % len(hostile)]
        sender.send(bob.user_id, _junk(sender.user_id, bob.user_id))
    alice.send(bob.user_id, b"genuine, after the flood")
    audited = world.audited_opens()

    first, refused = receive(bob)
    assert sorted(m.plaintext for m in first) == [b"genuine, after the flood", b"genuine, before the flood"]
    assert len(refused) == 500 and {r.reason.value for r in refused} == {"sender-key-refused"}
    assert not any(r.acknowledged for r in refused)  # kept once: the KMS might have refused by mistake

    second, dropped = receive(bob)
    assert second == []
    assert len(dropped) == 500 and {r.reason.value for r in dropped} == {"sender-key-refused"}
    assert all(r.acknowledged for r in dropped)  # the second failed delivery drops them
    assert mailbox_is_empty(world, bob)

    # One OpenPublicKey per hostile (sender, version) and one for alice's record, over both receives.
    hostile_users = {relay.user_id for relay in hostile}
    assert {user: n for user, n in counting.opens.items() if user in hostile_users} == dict.fromkeys(hostile_users, 1)
    assert counting.opens[alice.user_id] == 1
    assert world.audited_opens() - audited == len(hostile) + 1
    for relay in hostile:
        relay.close()


# -- rollback of a peer's keys ---------------------------------------------------------------------------


def test_a_relay_serving_an_older_record_after_a_newer_one_is_refused(world, tmp_path):
    alice = world.register(tmp_path, "alice")
    bob = world.register(tmp_path, "bob", kem="x25519")
    assert bob.reregister("mlkem768-x25519") == 2  # e.g. after a compromise of version 1
    alice.send(bob.user_id, b"to version 2")
    assert [(m.recipient_bundle_version, m.plaintext) for m in receive(bob)[0]] == [(2, b"to version 2")]

    world.double.stale(bob.user_id, 1)  # the relay serves the old X25519 bundle as bob's newest
    for sender in (alice, world.reopen(alice)):  # the same device after a restart remembers too
        with pytest.raises(KeyrelayError) as refused:
            sender.send(bob.user_id, b"must not reach version 1")
        assert refused.value.reason == "PEER_VERSION_DOWNGRADE"
        assert "version 1" in refused.value.message and "version 2" in refused.value.message
    assert mailbox_is_empty(world, bob)


def test_a_signature_by_a_superseded_version_is_accepted_only_for_the_grace_period(world, tmp_path):
    clock = WallClock()
    bob = world.register(tmp_path, "bob", wall_clock=clock)
    alice = world.register(tmp_path, "alice")
    alice.reregister()
    alice.send(bob.user_id, b"signed by version 2")
    [got] = receive(bob)[0]
    assert got.sender_bundle_version == 2  # bob has now seen alice's version 2

    # Someone holding alice's version-1 key (and the relay) writes as alice.
    clock.offset = 3600.0  # within the grace period: it may be a message that was in flight
    world.double.inject(bob.user_id, alice.user_id, forged_envelope(alice, 1, bob, sent=clock.now()))
    messages, refused = receive(bob)
    assert [(m.sender_bundle_version, m.plaintext) for m in messages] == [(1, b"from an old key")] and refused == []

    clock.offset = 25 * 3600.0  # a day after bob first saw version 2
    relay_id = world.double.inject(bob.user_id, alice.user_id, forged_envelope(alice, 1, bob, sent=clock.now()))
    messages, refused = receive(bob)
    assert messages == []
    assert [(r.relay_message_id, r.reason.value, r.acknowledged) for r in refused] == [
        (relay_id, "superseded-sender-version", True)
    ]
    assert "version 1" in refused[0].detail and world.double.pending_injected(bob.user_id) == []


# -- replay ----------------------------------------------------------------------------------------------


def test_a_replay_of_a_taken_envelope_is_refused_as_replayed_inside_the_window(world, tmp_path):
    alice, bob = world.register(tmp_path, "alice"), world.register(tmp_path, "bob")
    alice.send(bob.user_id, b"once only")
    assert [m.plaintext for m in receive(bob)[0]] == [b"once only"]
    [original] = world.double.delivered[bob.user_id]

    for receiver in (bob, world.reopen(bob)):  # the seen ids survive a restart
        relay_id = world.double.inject(bob.user_id, alice.user_id, original.envelope)
        messages, refused = receive(receiver)
        assert messages == []
        assert [(r.relay_message_id, r.reason.value, r.acknowledged) for r in refused] == [(relay_id, "replayed", True)]
        assert world.double.pending_injected(bob.user_id) == []


def test_a_replay_older_than_the_message_ttl_is_refused_as_too_old(world, tmp_path):
    clock = WallClock()
    alice, bob = world.register(tmp_path, "alice"), world.register(tmp_path, "bob", wall_clock=clock)
    alice.send(bob.user_id, b"long ago")
    assert [m.plaintext for m in receive(bob)[0]] == [b"long ago"]
    [original] = world.double.delivered[bob.user_id]

    clock.offset = 31 * DAY  # past the relay's 30-day TTL: bob no longer keeps its id
    relay_id = world.double.inject(bob.user_id, alice.user_id, original.envelope)
    messages, refused = receive(world.reopen(bob, wall_clock=clock))
    assert messages == []
    assert [(r.relay_message_id, r.reason.value, r.acknowledged) for r in refused] == [
        (relay_id, "envelope-too-old", True)
    ]
    assert "30 days" in refused[0].detail


def test_an_envelope_from_the_future_is_refused(world, tmp_path):
    clock = WallClock()
    alice, bob = world.register(tmp_path, "alice"), world.register(tmp_path, "bob", wall_clock=clock)
    future = clock.now() + timedelta(hours=2)  # e.g. to stay fresh, and unremembered, for longer
    relay_id = world.double.inject(bob.user_id, alice.user_id, forged_envelope(alice, 1, bob, sent=future))
    messages, refused = receive(bob)
    assert messages == []
    assert [(r.relay_message_id, r.reason.value) for r in refused] == [(relay_id, "envelope-from-future")]


def test_a_record_the_kms_cannot_parse_is_refused_once_and_does_not_stop_the_mailbox(world, tmp_path):
    counting = CountingKms(world.kms)
    bob = world.register(tmp_path, "bob", kms=counting)
    alice = world.register(tmp_path, "alice")
    garbled = world.relay(through_double=False)
    garbled.create_account(f"garbled-{uuid.uuid4().hex[:8]}")
    garbled.publish_record(SealedPublicKey(garbled.user_id, 1, b"\x00" * 80, b"not a wrapped key"), "k-1")
    for _ in range(20):
        garbled.send(bob.user_id, _junk(garbled.user_id, bob.user_id))
    alice.send(bob.user_id, b"behind the garbage")

    messages, refused = receive(bob)
    assert [m.plaintext for m in messages] == [b"behind the garbage"]
    assert len(refused) == 20 and {(r.reason.value, r.acknowledged) for r in refused} == {("sender-record-invalid", True)}
    assert counting.opens[garbled.user_id] == 1 and mailbox_is_empty(world, bob)
    garbled.close()
