"""The relay's RPCs on a real grpc.aio server (loopback, port 0) over a real SQLite store: accounts
and device tokens, the directory, mailboxes, and each kind of bad input refused with its own
status and reason while the relay stays healthy."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import replace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from foundation.errors import REASON_METADATA_KEY
from foundation.pki import CertificateAuthority, certificate_pem, write_credential
from foundation.tls import channel_credentials
from keyrelay.v1 import directory_pb2, directory_pb2_grpc, kms_pb2, relay_pb2, relay_pb2_grpc
from relay.config import MailboxConfig, RateLimitConfig, RelayConfig, ServerTlsConfig, StoreConfig
from relay.server import RelayServer


def relay_config(tmp_path, **changes) -> RelayConfig:
    config = RelayConfig(
        listen="127.0.0.1:0",
        shutdown_grace_seconds=1,
        store=StoreConfig(str(tmp_path / "relay.db")),
        rate_limit=RateLimitConfig(requests_per_second=0, account_creations_per_minute=0),
    )
    return replace(config, **changes)


class Relay:
    """A running relay and typed raw stubs on one channel."""

    def __init__(self, server: RelayServer, channel: grpc.aio.Channel) -> None:
        self.server = server
        self.channel = channel
        self.relay = relay_pb2_grpc.RelayServiceStub(channel)
        self.directory = directory_pb2_grpc.DirectoryServiceStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)

    async def account(self, user_id: str) -> str:
        response = await self.relay.CreateAccount(relay_pb2.CreateAccountRequest(user_id=user_id))
        return response.device_token

    async def send(self, token: str, to: str, envelope: bytes, client_id: str) -> relay_pb2.SendResponse:
        return await self.relay.Send(
            relay_pb2.SendRequest(recipient_user_id=to, envelope=envelope, client_message_id=client_id),
            metadata=auth(token),
        )

    async def receive(self, token: str, count: int, timeout: float = 10) -> list[relay_pb2.RelayMessage]:
        """The first `count` messages of a fresh Subscribe stream (then the stream is cancelled)."""
        call = self.relay.Subscribe(relay_pb2.SubscribeRequest(), metadata=auth(token))
        messages = []
        try:
            async with asyncio.timeout(timeout):
                async for item in call:
                    messages.append(item.message)
                    if len(messages) == count:
                        break
        finally:
            call.cancel()
        return messages

    async def nothing_pending(self, token: str) -> bool:
        """True if a fresh Subscribe delivers nothing within a short wait."""
        try:
            await self.receive(token, 1, timeout=0.5)
        except TimeoutError:
            return True
        return False

    async def assert_healthy(self) -> None:
        status = (await self.health.Check(health_pb2.HealthCheckRequest())).status
        assert status == health_pb2.HealthCheckResponse.SERVING


def auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def refused(call) -> tuple[grpc.StatusCode, str, str]:
    """Await a call that must fail: its (code, reason, message)."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    trailers = dict(info.value.trailing_metadata() or ())
    return info.value.code(), trailers.get(REASON_METADATA_KEY, ""), info.value.details()


async def start_relay(config: RelayConfig, credentials: grpc.ChannelCredentials | None = None, host="127.0.0.1"):
    server = RelayServer(config)
    port = await server.start()
    target = f"{host}:{port}"
    channel = grpc.aio.secure_channel(target, credentials) if credentials else grpc.aio.insecure_channel(target)
    return Relay(server, channel)


@pytest.fixture
async def relay(tmp_path):
    relay = await start_relay(relay_config(tmp_path, mailbox=MailboxConfig(max_messages=5)))
    yield relay
    await relay.channel.close()
    await relay.server.stop(0)


def sealed_record(user: str, version: int, key_id: str = "k-1") -> directory_pb2.DirectoryRecord:
    return directory_pb2.DirectoryRecord(
        user_id=user,
        record_version=version,
        sealed=kms_pb2.SealedPublicKey(
            user_id=user, bundle_version=version, sealed_bundle=b"sealed-%d" % version, wrapped_dek=b"dek-%d" % version
        ),
        kms_key_id=key_id,
    )


# -- accounts -------------------------------------------------------------------------------------


async def test_account_token_is_returned_once_and_only_its_hash_is_stored(relay, tmp_path):
    token = await relay.account("alice")
    assert token.startswith("krt_") and len(token) > 40
    code, reason, message = await refused(relay.relay.CreateAccount(relay_pb2.CreateAccountRequest(user_id="alice")))
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "ACCOUNT_EXISTS")
    assert "alice" in message and token not in message
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("relay.db*"))
    assert token.encode() not in stored
    assert hashlib.sha256(token.encode()).digest() in stored


@pytest.mark.parametrize("user_id", ["", "Alice", "bob smith", "a" * 65, "eve/../root", "ünïcode"])
async def test_malformed_user_id_is_refused(relay, user_id):
    code, reason, message = await refused(relay.relay.CreateAccount(relay_pb2.CreateAccountRequest(user_id=user_id)))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_USER_ID")
    assert "a-z, 0-9" in message
    token = await relay.account("carol")
    code, reason, _ = await refused(relay.directory.GetRecord(directory_pb2.GetRecordRequest(user_id=user_id), metadata=auth(token)))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_USER_ID")
    code, reason, _ = await refused(relay.send(token, user_id, b"x", "m-1"))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_USER_ID")
    await relay.assert_healthy()


async def test_calls_without_a_valid_token_are_unauthenticated(relay):
    await relay.account("alice")
    calls = {
        "no token": (),
        "wrong token": auth("krt_" + "A" * 43),
        "not a bearer token": (("authorization", "Basic YWxpY2U6cHc="),),
        "empty bearer": (("authorization", "Bearer "),),
    }
    for case, metadata in calls.items():
        for call in (
            relay.relay.Send(relay_pb2.SendRequest(recipient_user_id="alice", envelope=b"x", client_message_id="1"), metadata=metadata),
            relay.relay.Ack(relay_pb2.AckRequest(message_ids=["x"]), metadata=metadata),
            relay.directory.GetRecord(directory_pb2.GetRecordRequest(user_id="alice"), metadata=metadata),
            relay.directory.PublishRecord(directory_pb2.PublishRecordRequest(record=sealed_record("alice", 1)), metadata=metadata),
        ):
            code, reason, message = await refused(call)
            assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"), case
            assert "token" in message
        stream = relay.relay.Subscribe(relay_pb2.SubscribeRequest(), metadata=metadata)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stream:
                pass
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, case
    await relay.assert_healthy()


# -- directory -----------------------------------------------------------------------------------


async def test_directory_keeps_history_and_serves_the_newest(relay):
    alice, bob = await relay.account("alice"), await relay.account("bob")
    published = await relay.directory.PublishRecord(
        directory_pb2.PublishRecordRequest(record=sealed_record("alice", 1)), metadata=auth(alice)
    )
    assert published.record.publish_time.seconds > 0
    await relay.directory.PublishRecord(directory_pb2.PublishRecordRequest(record=sealed_record("alice", 3, "k-2")), metadata=auth(alice))
    newest = (await relay.directory.GetRecord(directory_pb2.GetRecordRequest(user_id="alice"), metadata=auth(bob))).record
    assert (newest.record_version, newest.kms_key_id, newest.sealed.sealed_bundle) == (3, "k-2", b"sealed-3")
    assert (newest.sealed.user_id, newest.sealed.bundle_version) == ("alice", 3)
    first = (await relay.directory.GetRecord(directory_pb2.GetRecordRequest(user_id="alice", record_version=1), metadata=auth(bob))).record
    assert first.sealed.wrapped_dek == b"dek-1"


async def test_directory_refusals(relay):
    alice, bob = await relay.account("alice"), await relay.account("bob")
    publish = relay.directory.PublishRecord
    await publish(directory_pb2.PublishRecordRequest(record=sealed_record("alice", 2)), metadata=auth(alice))

    for version in (1, 2):
        code, reason, message = await refused(publish(directory_pb2.PublishRecordRequest(record=sealed_record("alice", version)), metadata=auth(alice)))
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "RECORD_VERSION_NOT_NEWER")
        assert "version 3" in message
    code, reason, message = await refused(publish(directory_pb2.PublishRecordRequest(record=sealed_record("alice", 9)), metadata=auth(bob)))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    assert "own" in message
    swapped = sealed_record("bob", 1)
    swapped.sealed.user_id = "alice"
    code, reason, _ = await refused(publish(directory_pb2.PublishRecordRequest(record=swapped), metadata=auth(bob)))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    code, reason, _ = await refused(publish(directory_pb2.PublishRecordRequest(), metadata=auth(bob)))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    code, reason, _ = await refused(publish(directory_pb2.PublishRecordRequest(record=sealed_record("bob", 1, key_id="")), metadata=auth(bob)))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")

    get = relay.directory.GetRecord
    for user, version, expected in (("nobody", 0, "no account"), ("bob", 0, "not published"), ("alice", 7, "no record version 7")):
        code, reason, message = await refused(get(directory_pb2.GetRecordRequest(user_id=user, record_version=version), metadata=auth(bob)))
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "USER_NOT_FOUND")
        assert expected in message
    # Nothing bob tried changed alice's record.
    record = (await get(directory_pb2.GetRecordRequest(user_id="alice"), metadata=auth(bob))).record
    assert record.record_version == 2
    await relay.assert_healthy()


# -- mailboxes -----------------------------------------------------------------------------------


async def test_subscribe_streams_pending_then_new_and_ack_deletes(relay):
    alice, bob = await relay.account("alice"), await relay.account("bob")
    first = await relay.send(alice, "bob", b"ciphertext-1", "m-1")
    assert not first.duplicate and first.store_time.seconds > 0
    call = relay.relay.Subscribe(relay_pb2.SubscribeRequest(), metadata=auth(bob))
    stream = call.__aiter__()
    pending = (await asyncio.wait_for(stream.__anext__(), 10)).message
    assert (pending.message_id, pending.sender_user_id, pending.recipient_user_id) == (first.message_id, "alice", "bob")
    assert (pending.envelope, pending.client_message_id) == (b"ciphertext-1", "m-1")
    assert pending.HasField("expire_time") and pending.expire_time.seconds > pending.store_time.seconds
    second = await relay.send(alice, "bob", b"ciphertext-2", "m-2")
    live = (await asyncio.wait_for(stream.__anext__(), 10)).message
    assert live.message_id == second.message_id
    call.cancel()

    # Unacknowledged messages come again, in store order; acknowledged ones do not.
    again = await relay.receive(bob, 2)
    assert [m.message_id for m in again] == [first.message_id, second.message_id]
    acked = await relay.relay.Ack(relay_pb2.AckRequest(message_ids=[first.message_id]), metadata=auth(bob))
    assert acked.deleted_count == 1
    remaining = await relay.receive(bob, 1)
    assert remaining[0].message_id == second.message_id
    await relay.relay.Ack(relay_pb2.AckRequest(message_ids=[second.message_id, first.message_id]), metadata=auth(bob))
    assert await relay.nothing_pending(bob)


async def test_another_users_mailbox_is_out_of_reach(relay):
    alice, bob, eve = await relay.account("alice"), await relay.account("bob"), await relay.account("eve")
    sent = await relay.send(alice, "bob", b"for bob only", "m-1")
    # eve's stream carries only eve's mailbox, and her Ack of bob's message deletes nothing.
    assert await relay.nothing_pending(eve)
    acked = await relay.relay.Ack(relay_pb2.AckRequest(message_ids=[sent.message_id]), metadata=auth(eve))
    assert acked.deleted_count == 0
    assert [m.message_id for m in await relay.receive(bob, 1)] == [sent.message_id]


async def test_duplicate_client_message_id_is_stored_once(relay):
    alice, bob = await relay.account("alice"), await relay.account("bob")
    first = await relay.send(alice, "bob", b"hello", "m-dup")
    again = await relay.send(alice, "bob", b"hello", "m-dup")
    assert again.duplicate and again.message_id == first.message_id and again.store_time == first.store_time
    # Many concurrent retries of one message still store it once.
    retries = await asyncio.gather(*(relay.send(alice, "bob", b"hello", "m-dup") for _ in range(20)))
    assert {r.message_id for r in retries} == {first.message_id}
    # The same id from another sender is another message.
    other = await relay.send(bob, "bob", b"hello", "m-dup")
    assert not other.duplicate
    delivered = await relay.receive(bob, 2)
    assert sorted(m.message_id for m in delivered) == sorted([first.message_id, other.message_id])
    assert relay.server.store.mailbox_usage("bob") == (2, 10)
    # After bob acknowledges it, a late retry is still recognised and not delivered again.
    await relay.relay.Ack(relay_pb2.AckRequest(message_ids=[first.message_id]), metadata=auth(bob))
    late = await relay.send(alice, "bob", b"hello", "m-dup")
    assert late.duplicate and late.message_id == first.message_id
    remaining = await relay.receive(bob, 1)
    assert remaining[0].message_id == other.message_id
    # Reusing the id for a different message is an error, not a silent duplicate.
    code, reason, message = await refused(relay.send(alice, "bob", b"something else", "m-dup"))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert "already used" in message


async def test_send_refusals(relay):
    alice, bob = await relay.account("alice"), await relay.account("bob")
    cases = [
        (relay.send(alice, "bob", b"x" * (256 * 1024 + 1), "m-big"), grpc.StatusCode.INVALID_ARGUMENT, "ENVELOPE_TOO_LARGE", "256 KiB"),
        (relay.send(alice, "bob", b"x" * (300 * 1024), "m-huge"), grpc.StatusCode.INVALID_ARGUMENT, "ENVELOPE_TOO_LARGE", "256 KiB"),
        # Beyond the relay's largest request, gRPC's transport refuses the body before any handler.
        (relay.send(alice, "bob", b"x" * (3 * 1024 * 1024), "m-huge"), grpc.StatusCode.RESOURCE_EXHAUSTED, "", "larger than max"),
        (relay.send(alice, "bob", b"", "m-empty"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "empty"),
        (relay.send(alice, "bob", b"x", ""), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "client_message_id"),
        (relay.send(alice, "bob", b"x", "has space"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "client_message_id"),
        (relay.send(alice, "nobody", b"x", "m-1"), grpc.StatusCode.NOT_FOUND, "USER_NOT_FOUND", "nobody"),
        (relay.relay.Ack(relay_pb2.AckRequest(), metadata=auth(bob)), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "empty"),
        (relay.relay.Ack(relay_pb2.AckRequest(message_ids=["m"] * 1001), metadata=auth(bob)), grpc.StatusCode.INVALID_ARGUMENT, "BATCH_TOO_LARGE", "1000"),
    ]
    for call, code, reason, words in cases:
        got = await refused(call)
        assert got[:2] == (code, reason)
        assert words in got[2]
    # The largest envelope allowed is stored; nothing refused was.
    ok = await relay.send(alice, "bob", b"x" * (256 * 1024), "m-max")
    [message] = await relay.receive(bob, 1)
    assert message.message_id == ok.message_id and len(message.envelope) == 256 * 1024
    assert relay.server.store.mailbox_usage("bob") == (1, 256 * 1024)
    await relay.assert_healthy()


async def test_full_mailbox_is_resource_exhausted_until_read(relay):
    alice, bob = await relay.account("alice"), await relay.account("bob")
    sent = [await relay.send(alice, "bob", b"m", f"m-{i}") for i in range(5)]
    code, reason, message = await refused(relay.send(alice, "bob", b"m", "m-5"))
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "MAILBOX_FULL")
    assert "bob" in message and "not stored" in message
    # One quote around the name, and the limit as a number a person can act on.
    assert "the mailbox of 'bob' is full: it holds 5 unread messages" in message and "''" not in message
    # A retry of a stored message is still answered (it needs no room).
    assert (await relay.send(alice, "bob", b"m", "m-0")).duplicate
    await relay.relay.Ack(relay_pb2.AckRequest(message_ids=[sent[0].message_id]), metadata=auth(bob))
    assert not (await relay.send(alice, "bob", b"m", "m-5")).duplicate


async def test_concurrent_sends_are_all_stored_once(tmp_path):
    big = await start_relay(relay_config(tmp_path, mailbox=MailboxConfig(max_messages=1000)))
    try:
        tokens = [await big.account(name) for name in ("s1", "s2", "s3", "rcpt")]
        receipts = await asyncio.gather(
            *(big.send(tokens[i % 3], "rcpt", b"%d" % i, f"c-{i}") for i in range(150))
        )
        assert len({r.message_id for r in receipts}) == 150
        delivered = await big.receive(tokens[3], 150)
        assert {m.message_id for m in delivered} == {r.message_id for r in receipts}
        metrics = big.server.metrics.render().decode()
        assert 'keyrelay_relay_messages_total{event="stored"} 150.0' in metrics
        assert 'keyrelay_requests_total{code="OK",component="relay",operation="Send",route="local"} 150.0' in metrics
    finally:
        await big.channel.close()
        await big.server.stop(0)


async def test_rate_limit_answers_resource_exhausted(tmp_path):
    relay = await start_relay(
        relay_config(tmp_path, rate_limit=RateLimitConfig(requests_per_second=0.5, burst=2, account_creations_per_minute=2, account_creation_burst=2))
    )
    try:
        alice = await relay.account("alice")
        await relay.account("bob")
        code, reason, message = await refused(relay.relay.CreateAccount(relay_pb2.CreateAccountRequest(user_id="carol")))
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
        assert "retry in" in message
        await relay.send(alice, "bob", b"1", "m-1")
        await relay.send(alice, "bob", b"2", "m-2")
        code, reason, _ = await refused(relay.send(alice, "bob", b"3", "m-3"))
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    finally:
        await relay.channel.close()
        await relay.server.stop(0)


async def test_stop_ends_subscriptions_with_unavailable_and_keeps_messages(tmp_path):
    config = relay_config(tmp_path)
    relay = await start_relay(config)
    alice, bob = await relay.account("alice"), await relay.account("bob")
    sent = await relay.send(alice, "bob", b"kept", "m-1")
    call = relay.relay.Subscribe(relay_pb2.SubscribeRequest(), metadata=auth(bob))
    stream = call.__aiter__()
    await asyncio.wait_for(stream.__anext__(), 10)
    await asyncio.wait_for(relay.server.stop(5), 10)  # returns promptly: the stream does not hold it up
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await asyncio.wait_for(stream.__anext__(), 10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    await relay.channel.close()

    reopened = await start_relay(config)
    try:
        assert [m.message_id for m in await reopened.receive(bob, 1)] == [sent.message_id]
    finally:
        await reopened.channel.close()
        await reopened.server.stop(0)


async def test_relay_over_tls_serves_clients_without_certificates(tmp_path):
    ca = CertificateAuthority.create(tmp_path / "ca", "relay test CA")
    cert, key = ca.issue("relay", hosts=("localhost", "127.0.0.1"), server=True, client=False)
    paths = write_credential(tmp_path / "pki", "relay", certificate_pem(cert), key, ca.certificate_pem)
    config = relay_config(tmp_path, tls=ServerTlsConfig(cert=str(paths["cert"]), key=str(paths["key"])))
    relay = await start_relay(config, channel_credentials(paths["ca"]), host="localhost")
    try:
        token = await relay.account("alice")
        await relay.send(token, "alice", b"note to self", "m-1")
        assert len(await relay.receive(token, 1)) == 1
        # A plain-text client gets nowhere.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{relay.server.port}") as plain:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await relay_pb2_grpc.RelayServiceStub(plain).CreateAccount(
                    relay_pb2.CreateAccountRequest(user_id="bob"), timeout=5
                )
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await relay.channel.close()
        await relay.server.stop(0)


async def test_reflection_and_health_list_the_relay_services(relay):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(relay.channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = set()
    async for response in responses:
        names |= {s.name for s in response.list_services_response.service}
        break
    assert names == {
        "keyrelay.v1.RelayService", "keyrelay.v1.DirectoryService", "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    for service in ("keyrelay.v1.RelayService", "keyrelay.v1.DirectoryService"):
        status = (await relay.health.Check(health_pb2.HealthCheckRequest(service=service))).status
        assert status == health_pb2.HealthCheckResponse.SERVING
