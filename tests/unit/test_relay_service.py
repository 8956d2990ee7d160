"""`RelayService` over a real SQLite store in a temporary file, with a settable clock: expiry,
group commit, waking subscribers (also on news from the store of other relays' sends),
authentication and shutdown; and the relay's config checks."""

from __future__ import annotations

import asyncio
import threading

import pytest

from fake_clock import Clock
from foundation.config import ConfigError
from foundation.errors import (
    DeviceTokenExpiredError,
    DeviceTokenRevokedError,
    InvalidArgumentError,
    MailboxFullError,
    ResourceExhaustedError,
    TooManySubscriptionsError,
    UnauthenticatedError,
    UnavailableError,
    UserNotFoundError,
)
from foundation.ratelimit import TokenBucketLimiter
from relay.config import SenderQuotaConfig, TokenConfig, load_relay_config
from relay.service import RelayService
from relay.store.base import MailboxLimits
from relay.store.sql import SqlRelayStore

DAY = 86400.0


class CountingStore(SqlRelayStore):
    """The SQLite store, counting the transactions that store messages."""

    batches: list[int]

    def store_messages(self, messages, limits):
        self.batches.append(len(messages))
        return super().store_messages(messages, limits)


@pytest.fixture
def clock():
    return Clock(step=0)


@pytest.fixture
async def make_service(tmp_path, clock):
    made = []

    def make(ttl: float = DAY, **kwargs) -> RelayService:
        store = CountingStore(str(tmp_path / f"relay-{len(made)}.db"))
        store.batches = []
        service = RelayService(
            store, limits=kwargs.pop("limits", MailboxLimits(100, 1 << 20)), ttl_seconds=ttl,
            dedupe_seconds=kwargs.pop("dedupe_seconds", 7 * DAY), clock=clock, **kwargs,
        )
        made.append((service, store))
        return service

    yield make
    for service, store in made:
        await service.close()
        store.close()


async def accounts(service: RelayService, *names: str) -> dict[str, str]:
    return {name: (await service.create_account(name, "127.0.0.1")).device_token for name in names}


async def first(subscription, timeout: float = 5):
    return await asyncio.wait_for(subscription.__anext__(), timeout)


async def test_messages_expire_after_the_ttl_and_their_ids_are_then_forgotten(make_service, clock):
    service = make_service(ttl=3600)
    await accounts(service, "alice", "bob")
    receipt = await service.send("alice", "bob", b"ciphertext", "m-1")
    assert receipt.expire_time == pytest.approx(clock.now + 3600)
    clock.advance(3599)
    assert await service.delete_expired() == 0
    before_expiry = service.subscribe("bob")
    assert (await first(before_expiry)).message_id == receipt.message_id
    await before_expiry.aclose()
    clock.advance(2)
    # Past its TTL the message is no longer delivered, and the sweep deletes it.
    pending = service.subscribe("bob")
    with pytest.raises(asyncio.TimeoutError):
        await first(pending, timeout=0.3)
    await pending.aclose()
    assert await service.delete_expired() == 1
    assert service._store.mailbox_usage("bob") == (0, 0)
    # The client message id is forgotten with the message: the same id now stores a new message.
    again = await service.send("alice", "bob", b"ciphertext", "m-1")
    assert not again.duplicate and again.message_id != receipt.message_id


async def test_without_a_ttl_messages_stay_and_ids_are_remembered_for_dedupe_seconds(make_service, clock):
    service = make_service(ttl=0, dedupe_seconds=DAY)
    await accounts(service, "alice", "bob")
    receipt = await service.send("alice", "bob", b"kept", "m-1")
    assert receipt.expire_time is None
    await service.ack("bob", [receipt.message_id])
    clock.advance(DAY - 1)
    assert (await service.send("alice", "bob", b"kept", "m-1")).duplicate
    clock.advance(2)
    await service.delete_expired()
    assert not (await service.send("alice", "bob", b"kept", "m-1")).duplicate


async def test_concurrent_sends_are_group_committed(make_service):
    service = make_service()
    await accounts(service, "alice", "bob")
    receipts = await asyncio.gather(*(service.send("alice", "bob", b"%d" % i, f"m-{i}") for i in range(60)))
    assert len({r.message_id for r in receipts}) == 60
    store = service._store
    assert sum(store.batches) == 60
    assert len(store.batches) < 60  # sends waiting together shared transactions
    assert store.mailbox_usage("bob")[0] == 60


async def test_a_send_wakes_a_waiting_subscriber(make_service):
    service = make_service()
    await accounts(service, "alice", "bob")
    subscription = service.subscribe("bob")
    waiting = asyncio.ensure_future(first(subscription))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    receipt = await service.send("alice", "bob", b"wake up", "m-1")
    assert (await waiting).message_id == receipt.message_id
    assert service.signals.subscriber_count == 1
    await subscription.aclose()
    assert service.signals.subscriber_count == 0


class WatchedStore(SqlRelayStore):
    """The SQLite store, keeping the callbacks `watch` was given so a test can call them as a
    PostgreSQL store does: from a thread of its own."""

    def watch(self, on_recipient, on_reconnect):
        self.tell, self.reconnected = on_recipient, on_reconnect

    def call_from_a_thread(self, fn, *args) -> None:
        thread = threading.Thread(target=fn, args=args)
        thread.start()
        thread.join()


async def test_news_from_the_store_wakes_subscribers_of_this_relay(tmp_path, clock):
    """A send through another relay sharing the store reaches this relay's subscribers when the
    store tells of it (the recipient's), or of a lost connection (everyone's re-check)."""
    path = str(tmp_path / "shared.db")
    here_store, there_store = WatchedStore(path), SqlRelayStore(path)
    options = dict(limits=MailboxLimits(100, 1 << 20), ttl_seconds=DAY, dedupe_seconds=DAY, clock=clock)
    here, there = RelayService(here_store, **options), RelayService(there_store, **options)
    try:
        await here.watch_store()
        await there.watch_store()  # SQLite: nothing to watch
        await accounts(there, "alice", "bob", "carol")
        to_bob, to_carol = here.subscribe("bob"), here.subscribe("carol")
        waiting_bob, waiting_carol = asyncio.ensure_future(first(to_bob)), asyncio.ensure_future(first(to_carol))
        await asyncio.sleep(0.05)
        for_bob = await there.send("alice", "bob", b"for bob", "m-1")
        for_carol = await there.send("alice", "carol", b"for carol", "m-2")
        await asyncio.sleep(0.1)
        assert not waiting_bob.done() and not waiting_carol.done()  # the other relay's signals are its own

        here_store.call_from_a_thread(here_store.tell, "bob")
        assert (await waiting_bob).message_id == for_bob.message_id
        await asyncio.sleep(0.05)
        assert not waiting_carol.done()
        here_store.call_from_a_thread(here_store.reconnected)
        assert (await waiting_carol).message_id == for_carol.message_id
        await to_bob.aclose()
        await to_carol.aclose()
    finally:
        for service, store in ((here, here_store), (there, there_store)):
            await service.close()
            store.close()


async def test_ending_subscriptions_raises_unavailable_in_each_stream(make_service):
    service = make_service()
    await accounts(service, "bob")
    subscription = service.subscribe("bob")
    waiting = asyncio.ensure_future(first(subscription))
    await asyncio.sleep(0.05)
    service.end_subscriptions()
    with pytest.raises(UnavailableError, match="subscribe again"):
        await waiting


async def test_tokens_authenticate_their_account_only(make_service):
    service = make_service()
    tokens = await accounts(service, "alice", "bob")
    assert await service.authenticate(tokens["alice"]) == "alice"
    assert await service.authenticate(tokens["bob"]) == "bob"
    for token in (None, "", tokens["alice"] + "x", "krt_" + "A" * 43):
        with pytest.raises(UnauthenticatedError):
            await service.authenticate(token)


async def test_rate_limits_apply_per_account_and_to_account_creation(make_service):
    service = make_service(
        limiter=TokenBucketLimiter(0.001, 2), account_limiter=TokenBucketLimiter(0.001, 2)
    )
    tokens = await accounts(service, "alice", "bob")
    with pytest.raises(ResourceExhaustedError, match="retry in"):
        await service.create_account("carol", "127.0.0.1")
    await service.create_account("carol", "10.0.0.9")  # another address has its own bucket
    await service.authenticate(tokens["alice"])
    await service.authenticate(tokens["alice"])
    with pytest.raises(ResourceExhaustedError):
        await service.authenticate(tokens["alice"])
    assert await service.authenticate(tokens["bob"]) == "bob"


async def test_mailbox_byte_limit(make_service):
    service = make_service(limits=MailboxLimits(100, 300_000))
    await accounts(service, "alice", "bob")
    await service.send("alice", "bob", b"x" * 200_000, "m-1")
    with pytest.raises(MailboxFullError, match="it holds 300000 bytes of unread messages"):
        await service.send("alice", "bob", b"x" * 200_000, "m-2")
    with pytest.raises(InvalidArgumentError):
        await service.ack("bob", ["x" * 65])


# -- config ------------------------------------------------------------------------------------


def write(tmp_path, text: str) -> str:
    path = tmp_path / "relay.toml"
    path.write_text(text)
    return str(path)


def test_config_defaults_and_relative_store_path(tmp_path):
    config = load_relay_config(write(tmp_path, '[store]\npath = "data/relay.db"\n'))
    assert config.store.path == str(tmp_path / "data" / "relay.db")
    assert config.mailbox.message_ttl_seconds == 30 * DAY
    assert config.listen == "127.0.0.1:7301"


@pytest.mark.parametrize(
    "text, words",
    [
        ('listen = "0.0.0.0:7301"\n', "loopback"),
        ('[tls]\ncert = "relay.crt"\n', "cert and key together"),
        ('kms_endpoint = "kms:7443"\n', "never talks to the KMS"),
        ('shared_nodes = ["10.0.0.1:7101"]\n', "never talks to the KMS"),
        ("[mailbox]\nmax_bytes = 1000\n", "262144"),
        ("[mailbox]\nmessage_ttl_seconds = -1\n", "message_ttl_seconds"),
        ("[rate_limit]\nburst = 0\n", "rate_limit.burst"),
        ('[store]\npath = ""\n', "store.path"),
        ('[store]\ndsn = "mysql://relay@db/keyrelay"\n', "store.dsn .* is not a PostgreSQL URI"),
    ],
)
def test_config_mistakes_name_the_key_and_the_fix(tmp_path, text, words):
    with pytest.raises(ConfigError, match=words):
        load_relay_config(write(tmp_path, text))


def test_config_over_tls_may_listen_anywhere(tmp_path):
    config = load_relay_config(
        write(tmp_path, 'listen = "0.0.0.0:7301"\n[tls]\ncert = "relay.crt"\nkey = "relay.key"\n'),
        environ={"KEYRELAY_RELAY_MAILBOX_MAX_MESSAGES": "7"},
    )
    assert config.tls.cert == str(tmp_path / "relay.crt") and config.mailbox.max_messages == 7


def test_config_store_dsn_selects_postgres_and_never_shows_its_password(tmp_path):
    path = write(tmp_path, '[store]\npath = ""\n')
    dsn = "postgresql://relay:hunter2@db.internal:5432/keyrelay"
    config = load_relay_config(path, environ={"KEYRELAY_RELAY_STORE_DSN": dsn})
    assert config.store.dsn == dsn and config.store.location == dsn
    assert "hunter2" not in repr(config) and "hunter2" not in config.store.shown
    assert "relay:***@db.internal" in config.store.shown
    with pytest.raises(ConfigError) as info:
        load_relay_config(path, environ={"KEYRELAY_RELAY_STORE_DSN": "mysql://relay:hunter2@db/keyrelay"})
    assert "store.dsn" in str(info.value) and "hunter2" not in str(info.value)
    sqlite = load_relay_config(write(tmp_path, '[store]\npath = "relay.db"\ndsn = ""\n'))
    assert sqlite.store.location == str(tmp_path / "relay.db")


# -- device tokens -------------------------------------------------------------------------------

LIFETIME = 10 * DAY


async def test_tokens_expire_after_their_lifetime(make_service, clock):
    service = make_service(tokens=TokenConfig(lifetime_seconds=LIFETIME, cache_seconds=60))
    issued = await service.create_account("alice", "127.0.0.1")
    assert issued.expire_time == pytest.approx(clock.now + LIFETIME, abs=1)
    assert await service.authenticate(issued.device_token) == "alice"
    clock.advance(LIFETIME + 1)  # the cached entry must not outlive the token
    with pytest.raises(DeviceTokenExpiredError, match="expired at .*issue-token"):
        await service.authenticate(issued.device_token)


async def test_rotation_keeps_the_old_token_for_the_grace_period_only(make_service, clock):
    service = make_service(tokens=TokenConfig(lifetime_seconds=LIFETIME, rotation_grace_seconds=3600))
    old = (await service.create_account("alice", "127.0.0.1")).device_token
    rotated = await service.rotate_token(old)
    assert rotated.user_id == "alice" and rotated.device_token != old
    assert rotated.previous_expire_time == pytest.approx(clock.now + 3600, abs=1)
    assert rotated.expire_time == pytest.approx(clock.now + LIFETIME, abs=1)
    assert await service.authenticate(old) == "alice"
    assert await service.authenticate(rotated.device_token) == "alice"
    clock.advance(3601)
    with pytest.raises(DeviceTokenExpiredError):
        await service.authenticate(old)
    assert await service.authenticate(rotated.device_token) == "alice"


async def test_rotation_with_revoke_previous_and_a_lost_answer(make_service):
    service = make_service(tokens=TokenConfig(lifetime_seconds=0))
    old = (await service.create_account("alice", "127.0.0.1")).device_token
    lost = (await service.rotate_token(old)).device_token
    # The device never got `lost`: it rotates again with the old token, which revokes `lost`.
    kept = await service.rotate_token(old, revoke_previous=True)
    with pytest.raises(DeviceTokenRevokedError, match="revoked"):
        await service.authenticate(lost)
    with pytest.raises(DeviceTokenRevokedError):
        await service.authenticate(old)
    assert kept.expire_time is None
    assert await service.authenticate(kept.device_token) == "alice"


async def test_revoke_own_token_or_all_and_the_operator_issues_a_new_one(make_service):
    service = make_service()
    tokens = await accounts(service, "alice", "bob")
    second = (await service.rotate_token(tokens["alice"])).device_token
    assert await service.revoke_tokens(second) == 1
    with pytest.raises(DeviceTokenRevokedError):
        await service.authenticate(second)
    assert await service.authenticate(tokens["alice"]) == "alice"  # in its grace period still
    assert await service.revoke_tokens(tokens["alice"], all_tokens=True) == 1
    with pytest.raises(DeviceTokenRevokedError):
        await service.rotate_token(tokens["alice"])
    issued = await service.issue_token("alice")
    assert await service.authenticate(issued.device_token) == "alice"
    assert await service.authenticate(tokens["bob"]) == "bob"
    with pytest.raises(UserNotFoundError):
        await service.issue_token("nobody")


async def test_a_revocation_through_another_relay_holds_within_the_cache_time(tmp_path, clock):
    """Two relays on one store: a token revoked through one stops working on the other once the
    other's cached reading is older than tokens.cache_seconds."""
    store_here, store_there = SqlRelayStore(str(tmp_path / "r.db")), SqlRelayStore(str(tmp_path / "r.db"))
    options = dict(limits=MailboxLimits(10, 1 << 20), ttl_seconds=DAY, dedupe_seconds=DAY, clock=clock,
                   tokens=TokenConfig(lifetime_seconds=0, cache_seconds=5))
    here, there = RelayService(store_here, **options), RelayService(store_there, **options)
    try:
        token = (await here.create_account("alice", "127.0.0.1")).device_token
        assert await there.authenticate(token) == "alice"
        await here.revoke_tokens(token)
        assert await there.authenticate(token) == "alice"  # cached
        clock.advance(5.1)
        with pytest.raises(DeviceTokenRevokedError):
            await there.authenticate(token)
    finally:
        for service, store in ((here, store_here), (there, store_there)):
            await service.close()
            store.close()


async def test_rotations_are_rate_limited_per_account(make_service):
    service = make_service(tokens=TokenConfig(lifetime_seconds=0, rotations_per_hour=2))
    token = (await service.create_account("alice", "127.0.0.1")).device_token
    for _ in range(2):
        token = (await service.rotate_token(token, revoke_previous=True)).device_token
    with pytest.raises(ResourceExhaustedError, match="rotations"):
        await service.rotate_token(token)


# -- abuse limits --------------------------------------------------------------------------------


async def test_sender_quota_per_recipient_and_in_all(make_service):
    service = make_service(
        sender_quota=SenderQuotaConfig(window_seconds=3600, messages=3, bytes=0, all_recipients_bytes=0)
    )
    await accounts(service, "alice", "bob", "carol")
    for i in range(3):
        await service.send("alice", "bob", b"x", f"m{i}")
    # A retry of a stored message is answered as before and does not count.
    assert (await service.send("alice", "bob", b"x", "m0")).duplicate
    with pytest.raises(ResourceExhaustedError, match=r"quota of 3 messages \(sender_quota.messages\) to 'bob'"):
        await service.send("alice", "bob", b"x", "m3")
    await service.send("alice", "carol", b"x", "c0")  # another recipient has its own quota
    await service.send("carol", "bob", b"x", "c1")  # and so has another sender


async def test_a_refused_message_costs_nothing_of_the_quota(make_service):
    service = make_service(
        limits=MailboxLimits(1, 1 << 20),
        sender_quota=SenderQuotaConfig(window_seconds=3600, messages=2, bytes=0, all_recipients_bytes=0),
    )
    await accounts(service, "alice", "bob")
    await service.send("alice", "bob", b"x", "m0")
    for i in range(5):
        with pytest.raises(MailboxFullError):
            await service.send("alice", "bob", b"x", f"full{i}")
    assert await service.ack("bob", [m.message_id for m in [await first(service.subscribe("bob"))]]) == 1
    await service.send("alice", "bob", b"x", "m1")  # the five refusals were refunded


async def test_sender_byte_quota_to_all_recipients(make_service):
    big = b"b" * (200 * 1024)
    service = make_service(
        sender_quota=SenderQuotaConfig(window_seconds=3600, messages=0, bytes=0, all_recipients_bytes=300 * 1024)
    )
    await accounts(service, "alice", "bob", "carol")
    await service.send("alice", "bob", big, "m0")
    with pytest.raises(ResourceExhaustedError, match="all recipients"):
        await service.send("alice", "carol", big, "m1")


async def test_account_creation_is_limited_per_address_per_ipv6_64_and_in_all(make_service):
    service = make_service(
        account_limiter=TokenBucketLimiter(0.001, 1), account_total_limiter=TokenBucketLimiter(0.001, 4)
    )
    await service.create_account("a1", "2001:db8:1:2::1")
    with pytest.raises(ResourceExhaustedError, match="from this address"):
        await service.create_account("a2", "2001:db8:1:2:ffff::9")  # the same /64
    await service.create_account("a3", "2001:db8:1:3::1")
    await service.create_account("a4", "10.0.0.1")
    await service.create_account("a5", "10.0.0.2")
    with pytest.raises(ResourceExhaustedError, match="on this relay"):
        await service.create_account("a6", "10.0.0.3")


async def test_an_account_keeps_at_most_max_streams_and_the_oldest_is_closed(make_service):
    service = make_service(max_streams=2)
    await accounts(service, "alice", "bob")
    streams = [service.subscribe("bob") for _ in range(3)]
    waiting = [asyncio.ensure_future(first(s)) for s in streams]
    for _ in range(50):
        await asyncio.sleep(0.01)
        if waiting[0].done():
            break
    with pytest.raises(TooManySubscriptionsError, match="more than 2 Subscribe streams"):
        await waiting[0]
    assert service.signals.subscriber_count == 2
    await service.send("alice", "bob", b"hi", "m0")
    assert [(await w).envelope for w in waiting[1:]] == [b"hi", b"hi"]
