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
    InvalidArgumentError,
    MailboxFullError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from foundation.ratelimit import TokenBucketLimiter
from relay.config import load_relay_config
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
    return {name: (await service.create_account(name, "127.0.0.1"))[1] for name in names}


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
