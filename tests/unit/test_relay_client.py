"""Unit tests of client_sdk/relay_client.py against an in-process fake channel: no relay, no
sockets. The fake channel serves the generated stubs, so requests go through the real method
paths and protobuf (de)serialization, and handlers answer or raise like a relay would."""

from __future__ import annotations

import itertools
import threading
from datetime import datetime, timezone

import grpc
import pytest

import client_sdk as kr
from client_sdk import relay_client
from fake_channel import FakeChannel, FakeRpcError, FakeTime
from foundation.errors import REQUEST_ID_METADATA_KEY
from foundation.messaging_ids import MAX_ENVELOPE_BYTES
from keyrelay.v1 import directory_pb2, kms_pb2, relay_pb2

TOKEN = "tok-5ecret-d3vice-t0ken"
RELAY = "/keyrelay.v1.RelayService/"
DIRECTORY = "/keyrelay.v1.DirectoryService/"


class FakeStream:
    """A server stream: yields `responses`, then raises `error` (or ends); cancel() like grpc's."""

    def __init__(self, responses=(), error: FakeRpcError | None = None) -> None:
        self._responses = iter(responses)
        self._error = error
        self.cancelled = False

    def __iter__(self):
        return self

    def __next__(self):
        if self.cancelled:
            raise FakeRpcError(grpc.StatusCode.CANCELLED, "Locally cancelled by application!")
        try:
            return next(self._responses)
        except StopIteration:
            if self._error is not None:
                raise self._error from None
            raise

    def cancel(self):
        self.cancelled = True
        return True


class BlockingStream(FakeStream):
    """A stream with nothing to deliver: next() blocks until cancel(), like an idle mailbox."""

    def __init__(self) -> None:
        super().__init__()
        self._wake = threading.Event()

    def __next__(self):
        if not self._wake.wait(5):
            raise AssertionError("never cancelled")
        return super().__next__()

    def cancel(self):
        super().cancel()
        self._wake.set()
        return True


@pytest.fixture
def fake_time(monkeypatch):
    clock = FakeTime()
    monkeypatch.setattr(relay_client, "time", clock)
    return clock


@pytest.fixture
def channel():
    return FakeChannel()


@pytest.fixture
def client(channel, fake_time):
    return kr.RelayClient(channel=channel, device_token=TOKEN, timeout=3.0, retry_seconds=2.0)


def send_ok(request):
    return relay_pb2.SendResponse(message_id="m-1", store_time={"seconds": 1_750_000_000})


def relay_message(i: int) -> relay_pb2.SubscribeResponse:
    return relay_pb2.SubscribeResponse(
        message=relay_pb2.RelayMessage(
            message_id=f"m-{i}",
            sender_user_id="bob",
            recipient_user_id="alice",
            envelope=b"env-%d" % i,
            client_message_id=f"c-{i}",
            store_time={"seconds": 1_750_000_000 + i},
        )
    )


def unavailable():
    return FakeRpcError(grpc.StatusCode.UNAVAILABLE, "relay restarting", "NODE_NOT_READY")


SEALED = kr.SealedPublicKey("alice", 3, b"sealed-bundle", b"wrapped-dek")


# -- construction, token handling ---------------------------------------------------------------


def test_without_a_target_the_relay_comes_from_the_profile(monkeypatch, tmp_path):
    monkeypatch.setenv("KEYRELAY_PROFILE", str(tmp_path / "missing.toml"))
    with pytest.raises(kr.ProfileError, match="no profile at"):
        kr.RelayClient()
    kms_only = kr.write_profile(tmp_path / "kms.toml", "127.0.0.1:7443", None, None, None)
    with pytest.raises(kr.ProfileError, match=r"no \[relay\] section"):
        kr.RelayClient(profile=kms_only)
    both = kr.write_profile(tmp_path / "both.toml", "127.0.0.1:7443", None, None, None, relay_endpoint="127.0.0.1:7301")
    monkeypatch.setenv("KEYRELAY_PROFILE", str(both))
    for client in (kr.RelayClient(), kr.RelayClient.from_profile(both, device_token=TOKEN)):
        assert client.endpoint == "127.0.0.1:7301"  # a lazy channel: nothing is dialled
        client.close()
    client = kr.RelayClient("127.0.0.1:1")
    assert client.endpoint == "127.0.0.1:1" and client.profile is None
    client.close()


def test_repr_and_account_never_show_the_token(client, channel):
    channel.handlers[RELAY + "CreateAccount"] = lambda r: relay_pb2.CreateAccountResponse(
        user_id=r.user_id, device_token="fresh-" + TOKEN
    )
    assert TOKEN not in repr(client)
    account = client.create_account("alice")
    assert account == kr.RelayAccount("alice", "fresh-" + TOKEN)
    assert TOKEN not in repr(account) and "alice" in repr(account)
    assert TOKEN not in repr(client) and "alice" in repr(client)


def test_create_account_sends_no_token_and_adopts_the_new_one(client, channel):
    channel.handlers[RELAY + "CreateAccount"] = lambda r: relay_pb2.CreateAccountResponse(
        user_id=r.user_id, device_token="new-token"
    )
    channel.handlers[RELAY + "Send"] = send_ok
    client.create_account("alice")
    (_, request, timeout, metadata), = channel.calls_to("CreateAccount")
    assert request.user_id == "alice" and timeout == 3.0
    assert "authorization" not in metadata and metadata[REQUEST_ID_METADATA_KEY]
    assert client.user_id == "alice" and client.device_token == "new-token"
    client.send("bob", b"x")
    assert channel.calls_to("Send")[0][3]["authorization"] == "Bearer new-token"


def test_create_account_checks_the_user_id_locally(client, channel):
    with pytest.raises(kr.InvalidUserIdError, match="1-64 characters"):
        client.create_account("Alice!")
    assert channel.calls == []


def test_create_account_maps_account_exists(client, channel):
    def taken(request):
        raise FakeRpcError(grpc.StatusCode.ALREADY_EXISTS, "user id alice is taken", "ACCOUNT_EXISTS")

    channel.handlers[RELAY + "CreateAccount"] = taken
    with pytest.raises(kr.AccountExistsError):
        client.create_account("alice")
    assert client.user_id is None and client.device_token == TOKEN


def test_calls_without_a_token_fail_locally(channel, fake_time):
    client = kr.RelayClient(channel=channel)
    for call in (
        lambda: client.send("bob", b"x"),
        lambda: client.ack(["m-1"]),
        lambda: client.subscribe(),
        lambda: client.get_record("bob"),
        lambda: client.publish_record(SEALED, "key-1"),
        lambda: next(client.messages()),
    ):
        with pytest.raises(kr.UnauthenticatedError, match="call create_account first or pass device_token="):
            call()
    assert channel.calls == []


def test_device_token_setter(client):
    with pytest.raises(ValueError) as info:
        client.device_token = "has space"
    assert "has space" not in str(info.value)
    client.device_token = "other"
    assert client.device_token == "other"
    client.device_token = None
    assert client.device_token is None


def test_token_echoed_by_a_server_is_redacted(client, channel):
    def echo(request):
        raise FakeRpcError(grpc.StatusCode.UNAUTHENTICATED, f"bad token {TOKEN}", "UNAUTHENTICATED")

    channel.handlers[RELAY + "Send"] = echo
    with pytest.raises(kr.UnauthenticatedError) as info:
        client.send("bob", b"x")
    assert TOKEN not in str(info.value) and "<device token>" in str(info.value)


# -- send ---------------------------------------------------------------------------------------


def test_send_sends_authorization_and_returns_a_receipt(client, channel):
    channel.handlers[RELAY + "Send"] = lambda r: relay_pb2.SendResponse(
        message_id="m-9", store_time={"seconds": 1_750_000_000}, duplicate=True
    )
    receipt = client.send("bob", b"envelope", client_message_id="c-1", timeout=1.5)
    assert receipt == kr.SendReceipt("m-9", "c-1", datetime.fromtimestamp(1_750_000_000, timezone.utc), True)
    (path, request, timeout, metadata), = channel.calls
    assert path == RELAY + "Send" and timeout == 1.5
    assert metadata["authorization"] == f"Bearer {TOKEN}" and metadata[REQUEST_ID_METADATA_KEY]
    assert (request.recipient_user_id, request.envelope, request.client_message_id) == ("bob", b"envelope", "c-1")


def test_send_picks_a_fresh_client_message_id(client, channel):
    channel.handlers[RELAY + "Send"] = send_ok
    first, second = client.send("bob", b"a"), client.send("bob", b"b")
    assert first.client_message_id != second.client_message_id
    assert [c[1].client_message_id for c in channel.calls] == [first.client_message_id, second.client_message_id]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("Bob", b"x"), kr.InvalidUserIdError),
        (("", b"x"), kr.InvalidUserIdError),
        (("bob", b""), kr.InvalidArgumentError),
        (("bob", b"x" * (MAX_ENVELOPE_BYTES + 1)), kr.EnvelopeTooLargeError),
    ],
)
def test_send_validates_locally(client, channel, args, error):
    with pytest.raises(error):
        client.send(*args)
    assert channel.calls == []


@pytest.mark.parametrize("client_id", ["", "has space", "x" * 129, "caf\u00e9"])
def test_send_rejects_a_bad_client_message_id(client, channel, client_id):
    with pytest.raises(kr.InvalidArgumentError, match="client_message_id"):
        client.send("bob", b"x", client_message_id=client_id)
    assert channel.calls == []


def test_send_accepts_the_largest_envelope(client, channel):
    channel.handlers[RELAY + "Send"] = send_ok
    client.send("bob", bytearray(MAX_ENVELOPE_BYTES))
    assert len(channel.calls[0][1].envelope) == MAX_ENVELOPE_BYTES


def test_send_retries_unavailable_with_the_same_client_message_id(client, channel, fake_time):
    outcomes = [unavailable(), FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "slow"), None]

    def flaky(request):
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome
        return relay_pb2.SendResponse(message_id="m-1", store_time={"seconds": 1}, duplicate=True)

    channel.handlers[RELAY + "Send"] = flaky
    receipt = client.send("bob", b"x")
    sends = channel.calls_to("Send")
    assert len(sends) == 3 and receipt.duplicate
    assert {c[1].client_message_id for c in sends} == {receipt.client_message_id}
    assert len({c[3][REQUEST_ID_METADATA_KEY] for c in sends}) == 3  # one request id per attempt
    assert all(c[2] == 3.0 for c in sends)  # each attempt gets the whole per-call timeout
    # Backoff with jitter: 0.05 then 0.1, each between half and all of it.
    assert len(fake_time.sleeps) == 2
    assert 0.025 <= fake_time.sleeps[0] <= 0.05 and 0.05 <= fake_time.sleeps[1] <= 0.1


def test_send_gives_up_after_retry_seconds_with_the_last_error(client, channel, fake_time):
    def down(request):
        raise unavailable()

    channel.handlers[RELAY + "Send"] = down
    with pytest.raises(kr.NodeNotReadyError, match="relay restarting"):
        client.send("bob", b"x")
    attempts = len(channel.calls_to("Send"))
    assert 4 <= attempts <= 60
    assert fake_time.now - 1000.0 == pytest.approx(2.0)  # slept exactly until retry_seconds
    assert max(fake_time.sleeps) <= 1.0  # the backoff is capped at 1 s
    assert len({c[1].client_message_id for c in channel.calls}) == 1


def test_send_with_retry_seconds_zero_tries_once(channel, fake_time):
    client = kr.RelayClient(channel=channel, device_token=TOKEN, retry_seconds=0)

    def down(request):
        raise unavailable()

    channel.handlers[RELAY + "Send"] = down
    with pytest.raises(kr.UnavailableError):
        client.send("bob", b"x")
    assert len(channel.calls) == 1 and fake_time.sleeps == []


@pytest.mark.parametrize(
    ("code", "reason", "error"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, "ENVELOPE_TOO_LARGE", kr.EnvelopeTooLargeError),
        (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", kr.InvalidArgumentError),
        (grpc.StatusCode.NOT_FOUND, "USER_NOT_FOUND", kr.UserNotFoundError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "MAILBOX_FULL", kr.MailboxFullError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", kr.ResourceExhaustedError),
        (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED", kr.UnauthenticatedError),
        (grpc.StatusCode.INTERNAL, "INTERNAL", kr.InternalError),
    ],
)
def test_send_maps_errors_by_reason_and_does_not_retry_them(client, channel, fake_time, code, reason, error):
    def refuse(request):
        raise FakeRpcError(code, "refused", reason)

    channel.handlers[RELAY + "Send"] = refuse
    with pytest.raises(error) as info:
        client.send("bob", b"x")
    assert type(info.value) is error
    assert len(channel.calls) == 1 and fake_time.sleeps == []


# -- directory ----------------------------------------------------------------------------------


def stored(record: directory_pb2.DirectoryRecord) -> directory_pb2.DirectoryRecord:
    out = directory_pb2.DirectoryRecord()
    out.CopyFrom(record)
    out.publish_time.FromSeconds(1_750_000_000)
    return out


def test_publish_record_defaults_the_version_to_the_bundle_version(client, channel):
    channel.handlers[DIRECTORY + "PublishRecord"] = lambda r: directory_pb2.PublishRecordResponse(record=stored(r.record))
    record = client.publish_record(SEALED, "key-1")
    assert record == kr.DirectoryRecord(
        "alice", 3, SEALED, "key-1", datetime.fromtimestamp(1_750_000_000, timezone.utc)
    )
    (path, request, _, metadata), = channel.calls
    assert path == DIRECTORY + "PublishRecord"
    assert metadata["authorization"] == f"Bearer {TOKEN}"
    assert request.record.user_id == "alice" and request.record.record_version == 3
    assert request.record.sealed == kms_pb2.SealedPublicKey(
        user_id="alice", bundle_version=3, sealed_bundle=b"sealed-bundle", wrapped_dek=b"wrapped-dek"
    )
    client.publish_record(SEALED, "key-1", record_version=7)
    assert channel.calls[1][1].record.record_version == 7


def test_publish_record_validates_locally(client, channel):
    with pytest.raises(kr.InvalidArgumentError, match="kms_key_id"):
        client.publish_record(SEALED, "")
    with pytest.raises(kr.InvalidArgumentError, match="record_version"):
        client.publish_record(SEALED, "key-1", record_version=0)
    with pytest.raises(kr.InvalidUserIdError):
        client.publish_record(kr.SealedPublicKey("Alice", 1, b"s", b"w"), "key-1")
    assert channel.calls == []


def test_publish_record_maps_version_not_newer(client, channel):
    def refuse(request):
        raise FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "version 3 <= 4", "RECORD_VERSION_NOT_NEWER")

    channel.handlers[DIRECTORY + "PublishRecord"] = refuse
    with pytest.raises(kr.RecordVersionNotNewerError):
        client.publish_record(SEALED, "key-1")


def test_get_record(client, channel):
    def get(request):
        if request.user_id != "alice":
            raise FakeRpcError(grpc.StatusCode.NOT_FOUND, "no record", "USER_NOT_FOUND")
        record = directory_pb2.DirectoryRecord(
            user_id="alice", record_version=request.record_version or 5, kms_key_id="key-1",
            sealed=kms_pb2.SealedPublicKey(user_id="alice", bundle_version=5, sealed_bundle=b"s", wrapped_dek=b"w"),
        )
        return directory_pb2.GetRecordResponse(record=record)

    channel.handlers[DIRECTORY + "GetRecord"] = get
    record = client.get_record("alice")
    assert (record.record_version, record.kms_key_id, record.publish_time) == (5, "key-1", None)
    assert record.sealed == kr.SealedPublicKey("alice", 5, b"s", b"w")
    assert client.get_record("alice", 2).record_version == 2
    with pytest.raises(kr.UserNotFoundError):
        client.get_record("carol")
    with pytest.raises(kr.InvalidUserIdError):
        client.get_record("CAROL")
    assert len(channel.calls) == 3


# -- ack ----------------------------------------------------------------------------------------


def test_ack_of_nothing_makes_no_call(client, channel):
    assert client.ack([]) == 0
    assert channel.calls == []


def test_ack_splits_into_batches_of_1000_and_sums(client, channel):
    channel.handlers[RELAY + "Ack"] = lambda r: relay_pb2.AckResponse(deleted_count=len(r.message_ids) - 1)
    ids = [f"m-{i}" for i in range(2500)]
    assert client.ack(ids) == 2497
    batches = [list(c[1].message_ids) for c in channel.calls_to("Ack")]
    assert [len(b) for b in batches] == [1000, 1000, 500]
    assert list(itertools.chain(*batches)) == ids
    assert all(c[3]["authorization"] == f"Bearer {TOKEN}" for c in channel.calls)


def test_ack_retries_unavailable_but_not_invalid_argument(client, channel, fake_time):
    outcomes = [unavailable(), None]

    def flaky(request):
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome
        return relay_pb2.AckResponse(deleted_count=1)

    channel.handlers[RELAY + "Ack"] = flaky
    assert client.ack(["m-1"]) == 1
    assert len(channel.calls) == 2

    def refuse(request):
        raise FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "too many", "BATCH_TOO_LARGE")

    channel.handlers[RELAY + "Ack"] = refuse
    with pytest.raises(kr.BatchTooLargeError):
        client.ack(["m-1"])
    assert len(channel.calls) == 3


def test_ack_refuses_a_single_string(client, channel):
    with pytest.raises(TypeError):
        client.ack("m-1")
    assert channel.calls == []


# -- subscribe and messages ---------------------------------------------------------------------


def test_subscription_yields_messages_and_maps_the_failure(client, channel):
    stream = FakeStream([relay_message(1)], FakeRpcError(grpc.StatusCode.UNAUTHENTICATED, "revoked", "UNAUTHENTICATED"))
    channel.handlers[RELAY + "Subscribe"] = lambda r: stream
    subscription = client.subscribe()
    (_, _, timeout, metadata), = channel.calls
    assert timeout is None and metadata["authorization"] == f"Bearer {TOKEN}"  # no deadline by default
    message = next(subscription)
    assert message == kr.RelayMessage(
        "m-1", "bob", "alice", b"env-1", "c-1", datetime.fromtimestamp(1_750_000_001, timezone.utc), None
    )
    assert b"env-1" not in repr(message).encode()
    with pytest.raises(kr.UnauthenticatedError):
        next(subscription)


def test_subscription_cancel_ends_iteration_quietly(client, channel):
    stream = FakeStream([relay_message(1), relay_message(2)])
    channel.handlers[RELAY + "Subscribe"] = lambda r: stream
    with client.subscribe(timeout=5) as subscription:
        assert next(subscription).message_id == "m-1"
    assert stream.cancelled and channel.calls[0][2] == 5
    assert list(subscription) == []


def test_cancel_from_another_thread_unblocks_iteration_quietly(client, channel):
    stream = BlockingStream()
    channel.handlers[RELAY + "Subscribe"] = lambda r: stream
    subscription = client.subscribe()
    timer = threading.Timer(0.02, subscription.cancel)
    timer.start()
    try:
        assert list(subscription) == []  # blocked in next() until the cancel, then ends quietly
    finally:
        timer.join()
    assert stream.cancelled and subscription.cancelled


def test_messages_reconnects_after_unavailable_and_cancels_on_close(client, channel, fake_time):
    streams = [
        FakeStream([relay_message(1), relay_message(2)], unavailable()),
        FakeStream([], unavailable()),
        FakeStream([relay_message(2), relay_message(3), relay_message(4)]),
    ]
    opened = list(streams)
    channel.handlers[RELAY + "Subscribe"] = lambda r: streams.pop(0)
    messages = client.messages()
    got = [m.message_id for m in itertools.islice(messages, 4)]
    assert got == ["m-1", "m-2", "m-2", "m-3"]  # m-2 redelivered after the reconnect
    assert len(channel.calls_to("Subscribe")) == 3
    # Backoff 0.1 then 0.2 (with jitter) between the three subscriptions.
    assert len(fake_time.sleeps) == 2
    assert 0.05 <= fake_time.sleeps[0] <= 0.1 and 0.1 <= fake_time.sleeps[1] <= 0.2
    assert opened[0].cancelled and opened[1].cancelled and not opened[2].cancelled
    messages.close()
    assert opened[2].cancelled  # closing the generator cancels the live stream


def test_messages_backoff_resets_after_a_message(client, channel, fake_time):
    streams = [
        FakeStream([], unavailable()),
        FakeStream([relay_message(1)], unavailable()),
        FakeStream([relay_message(2)]),
    ]
    channel.handlers[RELAY + "Subscribe"] = lambda r: streams.pop(0)
    messages = client.messages()
    assert [m.message_id for m in itertools.islice(messages, 2)] == ["m-1", "m-2"]
    assert 0.05 <= fake_time.sleeps[0] <= 0.1 and 0.05 <= fake_time.sleeps[1] <= 0.1
    messages.close()


def test_messages_propagates_unauthenticated(client, channel, fake_time):
    stream = FakeStream([relay_message(1)], FakeRpcError(grpc.StatusCode.UNAUTHENTICATED, "bad token", "UNAUTHENTICATED"))
    streams = [stream]  # a second Subscribe (a wrong reconnect) fails with IndexError, not a hang
    channel.handlers[RELAY + "Subscribe"] = lambda r: streams.pop(0)
    messages = client.messages()
    assert next(messages).message_id == "m-1"
    with pytest.raises(kr.UnauthenticatedError):
        next(messages)
    assert len(channel.calls) == 1 and fake_time.sleeps == [] and stream.cancelled


def test_messages_without_reconnect_raises_unavailable(client, channel, fake_time):
    streams = [FakeStream([relay_message(1)], unavailable())]
    channel.handlers[RELAY + "Subscribe"] = lambda r: streams.pop(0)
    messages = client.messages(reconnect=False)
    assert next(messages).message_id == "m-1"
    with pytest.raises(kr.UnavailableError):
        next(messages)
    assert len(channel.calls) == 1
