"""The relay's abuse limits and device-token lifecycle on a real relay (grpc.aio on loopback port 0,
SQLite store): the cap on one account's Subscribe streams under a thousand attempts, per-sender
quotas, and tokens rotated, revoked and re-issued by the operator, through raw stubs, the SDK's
`RelayClient` and `keyrelay relay --issue-token`."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import grpc
import pytest

from client_sdk import DeviceTokenRevokedError, RelayClient
from foundation.errors import REASON_METADATA_KEY
from keyrelay.v1 import relay_pb2
from relay.config import RateLimitConfig, SenderQuotaConfig, TokenConfig
from test_relay_rpc import auth, refused, relay_config, start_relay

STREAMS = 1000
CAP = 16


@pytest.fixture
async def make_relay(tmp_path):
    started = []

    async def make(**changes):
        relay = await start_relay(relay_config(tmp_path, **changes))
        started.append(relay)
        return relay

    yield make
    for relay in started:
        await relay.channel.close()
        await relay.server.stop(0)


async def test_a_thousand_subscribe_streams_leave_at_most_the_cap_open(make_relay):
    relay = await make_relay()
    alice, bob = await relay.account("alice"), await relay.account("bob")
    signals = relay.server.service.signals
    calls = []
    for start in range(0, STREAMS, 100):
        calls += [relay.relay.Subscribe(relay_pb2.SubscribeRequest(), metadata=auth(bob)) for _ in range(100)]
        # Each stream registers when its handler starts; never more than the cap at any time.
        for _ in range(200):
            await asyncio.sleep(0.01)
            assert signals.subscriber_count <= CAP
            if sum(c.done() for c in calls) >= len(calls) - CAP:
                break
    for _ in range(500):
        if sum(c.done() for c in calls) == STREAMS - CAP:
            break
        await asyncio.sleep(0.02)
    closed = [c for c in calls if c.done()]
    assert len(closed) == STREAMS - CAP and signals.subscriber_count == CAP
    for call in closed[:: len(closed) // 20]:
        assert await call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        trailers = dict(await call.trailing_metadata())
        assert trailers[REASON_METADATA_KEY] == "TOO_MANY_SUBSCRIPTIONS"
        assert "subscribe_streams_per_account" in await call.details()
    # One message reaches each open stream once: CAP deliveries, not a thousand.
    await relay.send(alice, "bob", b"hello", "m-1")
    open_calls = [c for c in calls if not c.done()]
    received = await asyncio.wait_for(asyncio.gather(*(c.read() for c in open_calls)), 30)
    assert [r.message.envelope for r in received] == [b"hello"] * CAP
    for call in open_calls:
        call.cancel()
    await relay.assert_healthy()


async def test_sender_quota_refuses_with_the_limit_named(make_relay):
    relay = await make_relay(sender_quota=SenderQuotaConfig(window_seconds=60, messages=2, bytes=0, all_recipients_bytes=0))
    alice, carol = await relay.account("alice"), await relay.account("carol")
    await relay.account("bob")
    for i in range(2):
        await relay.send(alice, "bob", b"x", f"m-{i}")
    code, reason, message = await refused(relay.send(alice, "bob", b"x", "m-2"))
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    assert "quota of 2 messages (sender_quota.messages) to 'bob' per 60 s" in message and "retry in" in message
    assert (await relay.send(alice, "bob", b"x", "m-0")).duplicate  # a retry is still answered
    await relay.send(alice, "carol", b"x", "c-0")
    await relay.send(carol, "bob", b"x", "c-1")


async def test_account_creation_limits_are_tunable(make_relay):
    relay = await make_relay(rate_limit=RateLimitConfig(
        requests_per_second=0, account_creations_per_minute=0, account_creations_per_minute_total=1,
    ))
    await relay.account("first")
    code, reason, message = await refused(relay.relay.CreateAccount(relay_pb2.CreateAccountRequest(user_id="second")))
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    assert "account creations on this relay" in message


async def test_token_rotation_and_revocation_over_rpc(make_relay):
    relay = await make_relay(tokens=TokenConfig(lifetime_seconds=7200, rotation_grace_seconds=1, cache_seconds=0))
    created = await relay.relay.CreateAccount(relay_pb2.CreateAccountRequest(user_id="alice"))
    assert created.HasField("device_token_expire_time")
    old = created.device_token
    rotated = await relay.relay.RotateDeviceToken(relay_pb2.RotateDeviceTokenRequest(), metadata=auth(old))
    new = rotated.device_token
    assert rotated.previous_token_expire_time.seconds - created.device_token_expire_time.seconds < 0
    await relay.send(old, "alice", b"x", "during-grace")
    await relay.send(new, "alice", b"x", "new-token")
    await asyncio.sleep(1.2)
    code, reason, message = await refused(relay.send(old, "alice", b"x", "after-grace"))
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "DEVICE_TOKEN_EXPIRED")
    assert old not in message and new not in message
    third = (await relay.relay.RotateDeviceToken(
        relay_pb2.RotateDeviceTokenRequest(revoke_previous=True), metadata=auth(new)
    )).device_token
    code, reason, _ = await refused(relay.send(new, "alice", b"x", "revoked"))
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "DEVICE_TOKEN_REVOKED")
    answer = await relay.relay.RevokeDeviceToken(relay_pb2.RevokeDeviceTokenRequest(all=True), metadata=auth(third))
    assert answer.revoked_count == 1
    code, reason, _ = await refused(relay.send(third, "alice", b"x", "all-revoked"))
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "DEVICE_TOKEN_REVOKED")


async def test_sdk_rotates_and_revokes_and_the_operator_issues_a_token(make_relay, tmp_path):
    relay = await make_relay(tokens=TokenConfig(lifetime_seconds=7200, rotation_grace_seconds=0, cache_seconds=0))
    target = f"127.0.0.1:{relay.server.port}"

    def as_device() -> str:
        with RelayClient(target) as client:
            account = client.create_account("bob")
            assert account.expire_time is not None
            rotated = client.rotate_device_token(revoke_previous=True)
            assert client.device_token == rotated.device_token != account.device_token
            client.send("bob", b"to myself")
            with RelayClient(target, device_token=account.device_token) as stale:
                with pytest.raises(DeviceTokenRevokedError) as info:
                    stale.send("bob", b"stale")
                assert account.device_token not in str(info.value)
            assert client.revoke_device_token() == 1
            assert client.device_token is None
            return rotated.device_token

    revoked = await asyncio.to_thread(as_device)
    config = tmp_path / "relay.toml"
    config.write_text(f'listen = "127.0.0.1:0"\n[store]\npath = "{tmp_path / "relay.db"}"\n')
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "relay", "--config", str(config), "--issue-token", "bob"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    issued = done.stdout.strip()
    assert issued.startswith("krt_") and issued not in done.stderr and "revoked" in done.stderr
    await relay.send(issued, "bob", b"x", "with-issued")
    code, reason, _ = await refused(relay.send(revoked, "bob", b"x", "with-revoked"))
    assert reason == "DEVICE_TOKEN_REVOKED"
    missing = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "relay", "--config", str(config), "--issue-token", "nobody"],
        capture_output=True, text=True, timeout=60,
    )
    assert missing.returncode == 1 and "no account named 'nobody'" in missing.stderr and not missing.stdout
