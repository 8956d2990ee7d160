"""Tests of relay/store/sql.py, each on both engines: a temporary SQLite file and a fresh
PostgreSQL schema (the `database_location` fixture); and, on PostgreSQL, the ordering of mailboxes
under concurrent writers on two stores and the notifications replicas wake each other with."""

from __future__ import annotations

import dataclasses
import hashlib
import random
import sqlite3
import threading
import time
import uuid
from contextlib import closing

import psycopg
import pytest

from foundation.errors import UnavailableError
from foundation.postgres_db import is_postgres_dsn
from relay.store.base import (
    AccountTaken,
    ClientMessageIdReused,
    DeviceToken,
    MailboxFull,
    MailboxLimits,
    NewMessage,
    PublishedRecord,
    SendReceipt,
    TokenNotValid,
    UnknownUser,
    VersionNotNewer,
)
from relay.store.sql import CHANNEL_PREFIX, MIGRATIONS, SqlRelayStore

T0 = 1_750_000_000.0
ROOMY = MailboxLimits(max_messages=10_000, max_bytes=100 * 1024 * 1024)
#: What either engine raises for a broken constraint.
INTEGRITY_ERRORS = (sqlite3.IntegrityError, psycopg.IntegrityError)


@pytest.fixture
def location(database_location) -> str:
    return database_location


@pytest.fixture
def store(location):
    s = SqlRelayStore(location)
    yield s
    s.close()


def raw(location: str, sql: str, params: tuple = ()) -> list[tuple]:
    """Run one statement on a connection of its own, outside the store; its rows."""
    if is_postgres_dsn(location):
        with psycopg.connect(location, autocommit=True) as conn:
            cursor = conn.execute(sql.replace("%", "%%").replace("?", "%s"), params)
            return cursor.fetchall() if cursor.description else []
    with closing(sqlite3.connect(location)) as conn, conn:
        return conn.execute(sql, params).fetchall()


def token_hash(user_id: str) -> bytes:
    return hashlib.sha256(b"token-of-" + user_id.encode()).digest()


def owner(store: SqlRelayStore, digest: bytes) -> str | None:
    token = store.device_token(digest)
    return token.user_id if token is not None and token.valid_at(T0) else None


def add_users(store: SqlRelayStore, *user_ids: str) -> None:
    for user_id in user_ids:
        store.create_account(user_id, token_hash(user_id), T0, None)


def msg(
    sender: str = "alice",
    recipient: str = "bob",
    envelope: bytes = b"sealed envelope",
    client_message_id: str | None = None,
    store_time: float = T0,
    expire_time: float | None = T0 + 3600,
    forget_time: float | None = None,
) -> NewMessage:
    return NewMessage(
        message_id=str(uuid.uuid4()),
        sender=sender,
        recipient=recipient,
        client_message_id=client_message_id or str(uuid.uuid4()),
        envelope=envelope,
        digest=hashlib.sha256(recipient.encode() + b"\0" + envelope).digest(),
        store_time=store_time,
        expire_time=expire_time,
        forget_time=forget_time if forget_time is not None else (expire_time or store_time) + 86_400,
    )


def record(user_id: str = "alice", version: int = 1, publish_time: float = T0) -> PublishedRecord:
    return PublishedRecord(
        user_id=user_id,
        record_version=version,
        sealed_bundle=f"bundle-{user_id}-v{version}".encode(),
        wrapped_dek=f"dek-{version}".encode(),
        kms_key_id="relay-directory-key",
        publish_time=publish_time,
    )


def pending_ids(store: SqlRelayStore, recipient: str, now: float = T0) -> list[str]:
    return [m.message_id for m in store.pending_messages(recipient, 0, now, 100_000)]


def message_rows(location: str) -> int:
    return raw(location, "SELECT COUNT(*) FROM messages")[0][0]


def sent_rows(location: str) -> int:
    return raw(location, "SELECT COUNT(*) FROM sent")[0][0]


# -- schema -------------------------------------------------------------------------------------


def test_migration_creates_latest_schema(store, location):
    """A new database gets every table and index at the latest relay schema version."""
    assert len(MIGRATIONS) == 2
    assert store.schema_version() == 2
    assert raw(location, "SELECT version FROM relay_schema_version") == [(2,)]
    if is_postgres_dsn(location):
        assert store.path == location  # no password to hide in the test's DSN
        tables = {n for (n,) in raw(location, "SELECT table_name FROM information_schema.tables "
                                              "WHERE table_schema = current_schema()")}
        indexes = {n for (n,) in raw(location, "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")}
        # The seq counter is an identity column: one sequence, never reused, drawn in order.
        assert raw(location, "SELECT is_identity FROM information_schema.columns "
                             "WHERE table_schema = current_schema() AND table_name = 'messages' "
                             "AND column_name = 'seq'") == [("YES",)]
    else:
        assert store.path == location
        tables = {n for (n,) in raw(location, "SELECT name FROM sqlite_master WHERE type = 'table'")}
        indexes = {n for (n,) in raw(location, "SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert raw(location, "PRAGMA journal_mode") == [("wal",)]
    assert {"accounts", "records", "messages", "sent", "device_tokens", "relay_schema_version"} <= tables
    assert {"messages_by_recipient", "messages_by_expiry", "sent_by_forget_time", "device_tokens_by_user"} <= indexes


def test_sqlite_file_gets_its_folder(tmp_path):
    path = str(tmp_path / "nested" / "relay.db")
    store = SqlRelayStore(path)
    try:
        assert store.path == path and store.schema_version() == 2 and store.channel is None
    finally:
        store.close()


def test_reopening_keeps_data_and_does_not_migrate_again(store, location):
    add_users(store, "alice", "bob")
    store.publish_record(record("alice", 1))
    receipt = store.store_messages([msg()], ROOMY)[0]
    store.close()

    again = SqlRelayStore(location)
    try:
        assert again.schema_version() == 2
        assert again.account_exists("alice") and again.account_exists("bob")
        assert again.get_record("alice") == record("alice", 1)
        assert pending_ids(again, "bob") == [receipt.message_id]
        assert again.mailbox_usage("bob") == (1, len(b"sealed envelope"))
    finally:
        again.close()


def test_database_from_a_newer_keyrelay_is_refused(store, location):
    store.close()
    raw(location, "UPDATE relay_schema_version SET version = 99")
    with pytest.raises(RuntimeError, match="newer"):
        SqlRelayStore(location)


def test_sqlite_needs_a_file_path():
    """Every worker thread opens its own connection, so an in-memory database is refused."""
    with pytest.raises(ValueError):
        SqlRelayStore(":memory:")


def test_closed_store_fails_instead_of_reopening(store, location):
    store.close()
    with pytest.raises(UnavailableError if is_postgres_dsn(location) else sqlite3.ProgrammingError):
        store.account_exists("alice")


# -- accounts -----------------------------------------------------------------------------------


def test_create_account_and_look_it_up_by_token(store):
    assert not store.account_exists("alice")
    assert owner(store, token_hash("alice")) is None
    add_users(store, "alice", "bob")
    assert store.account_exists("alice")
    assert owner(store, token_hash("alice")) == "alice"
    assert owner(store, token_hash("bob")) == "bob"
    assert owner(store, token_hash("carol")) is None
    assert store.mailbox_usage("alice") == (0, 0)


def test_duplicate_user_id_is_account_taken_and_keeps_the_first_token(store):
    add_users(store, "alice")
    with pytest.raises(AccountTaken):
        store.create_account("alice", token_hash("someone else"), T0 + 1, None)
    assert owner(store, token_hash("alice")) == "alice"
    assert owner(store, token_hash("someone else")) is None


def test_duplicate_token_hash_is_not_account_taken(store):
    """A repeated token hash under another user id is a storage error, not a taken user id."""
    add_users(store, "alice")
    with pytest.raises(INTEGRITY_ERRORS) as info:
        store.create_account("mallory", token_hash("alice"), T0, None)
    assert not isinstance(info.value, AccountTaken)
    assert not store.account_exists("mallory")
    assert owner(store, token_hash("alice")) == "alice"


def test_rotation_keeps_the_old_token_until_its_grace_ends_and_revokes_all_others(store):
    add_users(store, "alice", "bob")
    first, second, third = token_hash("alice"), b"2" * 32, b"3" * 32
    issued = store.rotate_token(first, second, T0 + 10, T0 + 1000, T0 + 70)
    assert issued == DeviceToken("alice", T0 + 10, T0 + 1000, None)
    assert store.device_token(first).expire_time == T0 + 70 and store.device_token(first).valid_at(T0 + 69)
    assert not store.device_token(first).valid_at(T0 + 70)
    # Rotating again from the first token (its answer to the device was lost) revokes the second.
    store.rotate_token(first, third, T0 + 20, T0 + 1000, T0 + 80)
    assert store.device_token(second).revoke_time == T0 + 20
    assert store.device_token(first).expire_time == T0 + 70  # a grace period is never lengthened
    assert store.device_token(token_hash("bob")).valid_at(T0 + 20)  # other accounts untouched
    # A token that is no longer valid cannot rotate.
    with pytest.raises(TokenNotValid):
        store.rotate_token(second, b"4" * 32, T0 + 30, None, T0 + 90)
    with pytest.raises(TokenNotValid):
        store.rotate_token(first, b"4" * 32, T0 + 75, None, T0 + 90)
    with pytest.raises(TokenNotValid):
        store.rotate_token(b"unknown", b"4" * 32, T0 + 30, None, T0 + 90)


def test_rotation_with_revoke_previous_revokes_the_rotated_token(store):
    add_users(store, "alice")
    store.rotate_token(token_hash("alice"), b"2" * 32, T0 + 10, None, None)
    assert store.device_token(token_hash("alice")).revoke_time == T0 + 10
    assert store.device_token(b"2" * 32).valid_at(T0 + 10**9)


def test_revoke_one_or_all_tokens_and_operator_issue(store):
    add_users(store, "alice")
    store.rotate_token(token_hash("alice"), b"2" * 32, T0, None, T0 + 100)
    assert store.revoke_tokens("alice", T0 + 1, b"2" * 32) == 1
    assert store.device_token(token_hash("alice")).valid_at(T0 + 1)
    assert store.revoke_tokens("alice", T0 + 2) == 1
    assert not store.device_token(token_hash("alice")).valid_at(T0 + 2)
    assert store.issue_token("alice", b"5" * 32, T0 + 3, T0 + 500).user_id == "alice"
    assert store.device_token(b"5" * 32).valid_at(T0 + 3)
    store.issue_token("alice", b"6" * 32, T0 + 4, None)
    assert store.device_token(b"5" * 32).revoke_time == T0 + 4
    with pytest.raises(UnknownUser):
        store.issue_token("nobody", b"7" * 32, T0, None)


def test_dead_tokens_are_forgotten_after_the_forget_time(store):
    add_users(store, "alice", "bob")
    store.revoke_tokens("alice", T0 + 1)
    store.delete_expired(T0 + 5, token_forget_time=T0)
    assert store.device_token(token_hash("alice")) is not None
    store.delete_expired(T0 + 5, token_forget_time=T0 + 2)
    assert store.device_token(token_hash("alice")) is None
    assert store.device_token(token_hash("bob")) is not None


def test_tokens_from_before_expiry_get_one_at_start_up(location):
    """A store made by the first schema (accounts held their only token) migrates its tokens,
    which then get the configured lifetime."""
    from foundation.database import open_database

    db = open_database(location, MIGRATIONS[:1], "relay_schema_version", what="relay store")
    db.write(lambda conn: conn.execute(
        "INSERT INTO accounts (user_id, token_hash, create_time) VALUES (?, ?, ?)", ("old", b"h" * 32, T0)
    ))
    db.close()
    store = SqlRelayStore(location)
    try:
        assert store.device_token(b"h" * 32) == DeviceToken("old", T0, None, None)
        assert store.set_missing_token_expiry(T0 + 99) == 1
        assert store.device_token(b"h" * 32).expire_time == T0 + 99
        assert store.set_missing_token_expiry(T0 + 500) == 0
    finally:
        store.close()


def test_mailbox_usage_of_unknown_user_is_empty(store):
    assert store.mailbox_usage("nobody") == (0, 0)


# -- directory ----------------------------------------------------------------------------------


def test_publish_keeps_history(store):
    add_users(store, "alice")
    assert store.get_record("alice") is None
    v1, v2 = record("alice", 1, T0), record("alice", 2, T0 + 10)
    assert store.publish_record(v1) == v1
    assert store.get_record("alice") == v1
    assert store.publish_record(v2) == v2
    assert store.get_record("alice") == v2
    assert store.get_record("alice", 0) == v2
    assert store.get_record("alice", 1) == v1
    assert store.get_record("alice", 2) == v2
    assert store.get_record("alice", 3) is None
    assert store.get_record("bob") is None
    got = store.get_record("alice", 1)
    assert type(got.sealed_bundle) is bytes and type(got.wrapped_dek) is bytes


def test_versions_may_skip_but_not_go_back(store):
    add_users(store, "alice")
    store.publish_record(record("alice", 1))
    store.publish_record(record("alice", 5))
    assert store.get_record("alice").record_version == 5
    for version in (5, 4, 1):
        with pytest.raises(VersionNotNewer) as info:
            store.publish_record(record("alice", version, publish_time=T0 + 99))
        assert info.value.newest == 5
    # The refused publishes wrote nothing: version 1 and 5 are the originals, 4 does not exist.
    assert store.get_record("alice", 1) == record("alice", 1)
    assert store.get_record("alice", 5) == record("alice", 5)
    assert store.get_record("alice", 4) is None


def test_version_zero_is_never_newer(store):
    """Version 0 means "newest" to get_record, so it can never be published."""
    add_users(store, "alice")
    with pytest.raises(VersionNotNewer) as info:
        store.publish_record(record("alice", 0))
    assert info.value.newest == 0
    assert store.get_record("alice") is None


def test_records_are_per_user(store):
    add_users(store, "alice", "bob")
    store.publish_record(record("alice", 3))
    store.publish_record(record("bob", 1))  # alice's newer version does not bind bob
    assert store.get_record("bob") == record("bob", 1)
    assert store.get_record("alice") == record("alice", 3)


def test_publish_for_unknown_user(store):
    with pytest.raises(UnknownUser):
        store.publish_record(record("ghost", 1))
    assert store.get_record("ghost") is None


# -- store_messages -----------------------------------------------------------------------------


def test_store_batch_with_mixed_results(store, location):
    add_users(store, "alice", "bob", "carol")
    original = msg(client_message_id="c-1", store_time=T0, expire_time=T0 + 60)
    first = store.store_messages([original], ROOMY)
    assert first == [SendReceipt(original.message_id, T0, T0 + 60, duplicate=False)]

    new = msg(recipient="carol", envelope=b"hello carol", expire_time=None)
    retry = msg(client_message_id="c-1", store_time=T0 + 5, expire_time=T0 + 65)  # same digest, new id/time
    reused = msg(client_message_id="c-1", envelope=b"something else")
    nobody = msg(recipient="nobody")
    results = store.store_messages([new, retry, reused, nobody], ROOMY)

    assert results[0] == SendReceipt(new.message_id, new.store_time, None, duplicate=False)
    assert results[1] == SendReceipt(original.message_id, T0, T0 + 60, duplicate=True)
    assert isinstance(results[2], ClientMessageIdReused)
    assert isinstance(results[3], UnknownUser)

    # Only the two new messages were written.
    assert message_rows(location) == 2
    assert sent_rows(location) == 2
    assert pending_ids(store, "bob") == [original.message_id]
    assert pending_ids(store, "carol") == [new.message_id]
    assert store.mailbox_usage("bob") == (1, len(original.envelope))
    assert store.mailbox_usage("carol") == (1, len(b"hello carol"))


def test_empty_batch(store):
    assert store.store_messages([], ROOMY) == []


def test_client_message_ids_are_per_sender(store):
    add_users(store, "alice", "bob", "carol")
    a = msg(sender="alice", client_message_id="same")
    c = msg(sender="carol", client_message_id="same", envelope=b"other")
    results = store.store_messages([a, c], ROOMY)
    assert [r.duplicate for r in results] == [False, False]
    assert [r.message_id for r in results] == [a.message_id, c.message_id]


def test_mailbox_full_by_count(store, location):
    add_users(store, "alice", "bob", "carol")
    limits = MailboxLimits(max_messages=3, max_bytes=1_000_000)
    batch = [msg() for _ in range(4)] + [msg(recipient="carol")]
    results = store.store_messages(batch, limits)
    assert [type(r) for r in results[:3]] == [SendReceipt] * 3
    assert isinstance(results[3], MailboxFull) and results[3].limit == "messages"
    assert isinstance(results[4], SendReceipt)  # another mailbox is not affected
    assert store.mailbox_usage("bob") == (3, 3 * len(b"sealed envelope"))
    assert message_rows(location) == 4
    assert sent_rows(location) == 4

    # The refused message left no idempotency record: once there is room, its retry is stored.
    store.delete_messages("bob", [results[0].message_id])
    retry = store.store_messages([batch[3]], limits)[0]
    assert retry == SendReceipt(batch[3].message_id, batch[3].store_time, batch[3].expire_time, duplicate=False)
    assert store.mailbox_usage("bob") == (3, 3 * len(b"sealed envelope"))


def test_mailbox_full_by_bytes(store, location):
    add_users(store, "alice", "bob")
    limits = MailboxLimits(max_messages=100, max_bytes=100)
    results = store.store_messages(
        [msg(envelope=b"x" * 60), msg(envelope=b"y" * 41), msg(envelope=b"z" * 40), msg(envelope=b"w")],
        limits,
    )
    assert isinstance(results[0], SendReceipt)
    assert isinstance(results[1], MailboxFull) and results[1].limit == "bytes"
    assert isinstance(results[2], SendReceipt)  # exactly reaching the limit is allowed
    assert isinstance(results[3], MailboxFull) and results[3].limit == "bytes"
    assert store.mailbox_usage("bob") == (2, 100)
    assert message_rows(location) == 2
    assert [m.envelope for m in store.pending_messages("bob", 0, T0, 10)] == [b"x" * 60, b"z" * 40]


def test_envelope_larger_than_the_whole_limit(store):
    add_users(store, "alice", "bob")
    result = store.store_messages([msg(envelope=b"x" * 11)], MailboxLimits(max_messages=5, max_bytes=10))[0]
    assert isinstance(result, MailboxFull) and result.limit == "bytes"
    assert store.mailbox_usage("bob") == (0, 0)


def test_count_limit_is_checked_before_bytes(store):
    add_users(store, "alice", "bob")
    limits = MailboxLimits(max_messages=1, max_bytes=10)
    store.store_messages([msg(envelope=b"12345")], limits)
    result = store.store_messages([msg(envelope=b"123456")], limits)[0]
    assert isinstance(result, MailboxFull) and result.limit == "messages"


def test_duplicate_within_one_batch(store, location):
    add_users(store, "alice", "bob")
    first = msg(client_message_id="twice")
    again = msg(client_message_id="twice", store_time=T0 + 1)
    changed = msg(client_message_id="twice", envelope=b"changed")
    results = store.store_messages([first, again, changed], ROOMY)
    assert results[0] == SendReceipt(first.message_id, first.store_time, first.expire_time, duplicate=False)
    assert results[1] == SendReceipt(first.message_id, first.store_time, first.expire_time, duplicate=True)
    assert isinstance(results[2], ClientMessageIdReused)
    assert message_rows(location) == 1
    assert store.mailbox_usage("bob") == (1, len(first.envelope))


def test_duplicate_of_a_duplicate_does_not_need_room(store):
    """A retry answers from the log, so it succeeds even when the mailbox is full."""
    add_users(store, "alice", "bob")
    limits = MailboxLimits(max_messages=1, max_bytes=1000)
    first = msg(client_message_id="c")
    store.store_messages([first], limits)
    assert store.store_messages([msg(client_message_id="c")], limits)[0].duplicate is True


def test_duplicate_after_ack(store, location):
    add_users(store, "alice", "bob")
    first = msg(client_message_id="acked")
    store.store_messages([first], ROOMY)
    assert store.delete_messages("bob", [first.message_id]) == 1
    retry = store.store_messages([msg(client_message_id="acked", store_time=T0 + 30)], ROOMY)[0]
    assert retry == SendReceipt(first.message_id, first.store_time, first.expire_time, duplicate=True)
    assert isinstance(store.store_messages([msg(client_message_id="acked", envelope=b"new")], ROOMY)[0],
                      ClientMessageIdReused)
    assert pending_ids(store, "bob") == []
    assert store.mailbox_usage("bob") == (0, 0)
    assert message_rows(location) == 0


def test_transaction_failure_rolls_back_the_whole_batch(store, location):
    """A database error (here a message id stored twice) raises and leaves nothing of the batch."""
    add_users(store, "alice", "bob")
    kept = msg()
    store.store_messages([kept], ROOMY)
    ok = msg()
    clash = dataclasses.replace(msg(), message_id=kept.message_id)
    with pytest.raises(INTEGRITY_ERRORS):
        store.store_messages([ok, clash], ROOMY)
    assert pending_ids(store, "bob") == [kept.message_id]
    assert store.mailbox_usage("bob") == (1, len(kept.envelope))
    assert sent_rows(location) == 1
    # The first message of the failed batch was not logged either: sending it again stores it.
    assert store.store_messages([ok], ROOMY)[0].duplicate is False


# -- pending_messages ---------------------------------------------------------------------------


def test_pending_messages_in_order_after_seq_with_limit(store):
    add_users(store, "alice", "bob", "carol")
    batch = [msg(envelope=f"m{i}".encode()) for i in range(5)]
    store.store_messages(batch[:2] + [msg(recipient="carol")], ROOMY)
    store.store_messages(batch[2:], ROOMY)

    everything = store.pending_messages("bob", 0, T0, 100)
    assert [m.message_id for m in everything] == [m.message_id for m in batch]
    seqs = [m.seq for m in everything]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    first = everything[0]
    assert (first.sender, first.recipient, first.client_message_id, first.envelope) == (
        "alice", "bob", batch[0].client_message_id, b"m0",
    )
    assert (first.store_time, first.expire_time) == (batch[0].store_time, batch[0].expire_time)
    assert type(first.envelope) is bytes

    page = store.pending_messages("bob", 0, T0, 2)
    assert [m.message_id for m in page] == [m.message_id for m in batch[:2]]
    page = store.pending_messages("bob", page[-1].seq, T0, 2)
    assert [m.message_id for m in page] == [m.message_id for m in batch[2:4]]
    page = store.pending_messages("bob", page[-1].seq, T0, 2)
    assert [m.message_id for m in page] == [batch[4].message_id]
    assert store.pending_messages("bob", page[-1].seq, T0, 2) == []
    assert store.pending_messages("nobody", 0, T0, 10) == []


def test_pending_messages_hide_expired(store):
    add_users(store, "alice", "bob")
    forever = msg(expire_time=None)
    soon = msg(expire_time=T0 + 10)
    later = msg(expire_time=T0 + 20)
    store.store_messages([forever, soon, later], ROOMY)
    assert pending_ids(store, "bob", T0 + 9.999) == [forever.message_id, soon.message_id, later.message_id]
    assert pending_ids(store, "bob", T0 + 10) == [forever.message_id, later.message_id]  # due at expire_time
    assert pending_ids(store, "bob", T0 + 1e9) == [forever.message_id]
    # Hidden is not deleted: they count until delete_expired removes them.
    assert store.mailbox_usage("bob")[0] == 3


def test_seq_is_never_reused(store):
    add_users(store, "alice", "bob")
    store.store_messages([msg(), msg()], ROOMY)
    last = store.pending_messages("bob", 0, T0, 10)[-1]
    store.delete_messages("bob", pending_ids(store, "bob"))
    store.store_messages([msg()], ROOMY)
    assert store.pending_messages("bob", 0, T0, 10)[0].seq > last.seq


# -- delete_messages ----------------------------------------------------------------------------


def test_delete_messages_only_from_the_recipients_mailbox(store):
    add_users(store, "alice", "bob", "carol")
    to_bob = [msg(envelope=b"b" * (i + 1)) for i in range(3)]
    to_carol = msg(recipient="carol", envelope=b"c" * 7)
    store.store_messages(to_bob + [to_carol], ROOMY)

    # carol cannot acknowledge bob's messages.
    assert store.delete_messages("carol", [to_bob[0].message_id]) == 0
    assert store.mailbox_usage("bob") == (3, 6)
    assert store.mailbox_usage("carol") == (1, 7)

    deleted = store.delete_messages(
        "bob", [to_bob[0].message_id, to_bob[2].message_id, to_carol.message_id, "unknown", to_bob[0].message_id]
    )
    assert deleted == 2
    assert pending_ids(store, "bob") == [to_bob[1].message_id]
    assert pending_ids(store, "carol") == [to_carol.message_id]
    assert store.mailbox_usage("bob") == (1, 2)
    assert store.mailbox_usage("carol") == (1, 7)

    assert store.delete_messages("bob", [to_bob[0].message_id]) == 0  # already acknowledged
    assert store.delete_messages("bob", []) == 0
    assert store.mailbox_usage("bob") == (1, 2)


def test_delete_a_thousand_ids(store):
    add_users(store, "alice", "bob")
    batch = [msg(envelope=b"x" * 3) for _ in range(1100)]
    store.store_messages(batch, ROOMY)
    ids = [m.message_id for m in batch[:990]] + [f"missing-{i}" for i in range(10)]
    assert store.delete_messages("bob", ids) == 990
    assert store.mailbox_usage("bob") == (110, 330)
    assert pending_ids(store, "bob") == [m.message_id for m in batch[990:]]


# -- delete_expired -----------------------------------------------------------------------------


def test_delete_expired_removes_due_messages_and_fixes_counters(store, location):
    add_users(store, "alice", "bob", "carol")
    store.store_messages(
        [
            msg(envelope=b"1", expire_time=T0 + 10),
            msg(envelope=b"22", expire_time=T0 + 20),
            msg(envelope=b"333", expire_time=None),
            msg(recipient="carol", envelope=b"4444", expire_time=T0 + 15),
            msg(recipient="carol", envelope=b"55555", expire_time=T0 + 100),
        ],
        ROOMY,
    )
    assert store.delete_expired(T0 + 5) == 0
    assert store.delete_expired(T0 + 20) == 3  # the due time itself counts as expired
    assert store.mailbox_usage("bob") == (1, 3)
    assert store.mailbox_usage("carol") == (1, 5)
    assert [m.envelope for m in store.pending_messages("bob", 0, T0, 10)] == [b"333"]
    assert [m.envelope for m in store.pending_messages("carol", 0, T0, 10)] == [b"55555"]
    assert message_rows(location) == 2
    assert store.delete_expired(T0 + 1e9) == 1  # the one without expire_time stays forever
    assert store.mailbox_usage("bob") == (1, 3)
    assert store.mailbox_usage("carol") == (0, 0)


def test_delete_expired_honours_limit_soonest_first(store):
    add_users(store, "alice", "bob")
    batch = [msg(envelope=b"e", expire_time=T0 + 10 - i) for i in range(5)]
    store.store_messages(batch, ROOMY)
    assert store.delete_expired(T0 + 100, limit=2) == 2
    assert set(pending_ids(store, "bob")) == {m.message_id for m in batch[:3]}
    assert store.mailbox_usage("bob") == (3, 3)
    assert store.delete_expired(T0 + 100, limit=2) == 2
    assert store.delete_expired(T0 + 100, limit=2) == 1
    assert store.delete_expired(T0 + 100, limit=2) == 0
    assert store.mailbox_usage("bob") == (0, 0)


def test_idempotency_record_outlives_the_message_until_forget_time(store, location):
    add_users(store, "alice", "bob")
    first = msg(client_message_id="c", expire_time=T0 + 10, forget_time=T0 + 50)
    store.store_messages([first], ROOMY)

    assert store.delete_expired(T0 + 10) == 1
    # Expired and deleted, but the sender's retry is still recognised.
    retry = store.store_messages([msg(client_message_id="c", expire_time=T0 + 10, forget_time=T0 + 50)], ROOMY)[0]
    assert retry.duplicate and retry.message_id == first.message_id
    assert message_rows(location) == 0
    assert sent_rows(location) == 1

    assert store.delete_expired(T0 + 49.9) == 0
    assert sent_rows(location) == 1
    assert store.delete_expired(T0 + 50) == 0
    assert sent_rows(location) == 0

    # Forgotten: the same client message id now stores a new message (even with other content).
    anew = msg(client_message_id="c", envelope=b"fresh", store_time=T0 + 60, expire_time=T0 + 70)
    result = store.store_messages([anew], ROOMY)[0]
    assert result == SendReceipt(anew.message_id, T0 + 60, T0 + 70, duplicate=False)
    assert pending_ids(store, "bob", T0 + 60) == [anew.message_id]


# -- concurrency and durability -----------------------------------------------------------------


def test_concurrent_senders_store_each_message_exactly_once(store, location):
    """4 threads x 50 messages, each also racing to send one shared client id: every message lands
    once, retries are duplicates, and the counters match the mailbox."""
    add_users(store, "bob", *(f"sender-{n}" for n in range(4)))
    shared = {n: msg(sender="racer", client_message_id="shared", envelope=b"same") for n in range(4)}
    add_users(store, "racer")
    results: dict[int, list] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def send(n: int) -> None:
        try:
            mine = [msg(sender=f"sender-{n}", envelope=b"m" * (n + 1)) for _ in range(50)]
            start.wait()
            out = []
            for i in range(0, 50, 5):
                out += store.store_messages(mine[i : i + 5], ROOMY)
                if i == 20:
                    out += store.store_messages([shared[n]], ROOMY)
            # Each thread retries its first batch: all duplicates now.
            out += store.store_messages(mine[:5], ROOMY)
            results[n] = (mine, out)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []

    stored_ids = []
    for n, (mine, out) in results.items():
        own = [r for r in out if r.message_id in {m.message_id for m in mine}]
        assert len(own) == 55
        assert all(not r.duplicate for r in own[:50]) and all(r.duplicate for r in own[50:])
        stored_ids += [m.message_id for m in mine]
    shared_ids = {m.message_id for m in shared.values()}
    shared_receipts = [r for _, out in results.values() for r in out if r.message_id in shared_ids]
    assert len(shared_receipts) == 4
    assert sum(not r.duplicate for r in shared_receipts) == 1
    assert len({r.message_id for r in shared_receipts}) == 1

    pending = store.pending_messages("bob", 0, T0, 1000)
    assert len(pending) == 201
    assert len({m.seq for m in pending}) == 201
    assert set(stored_ids) | {shared_receipts[0].message_id} == {m.message_id for m in pending}
    assert store.mailbox_usage("bob") == (201, sum(len(m.envelope) for m in pending))
    assert message_rows(location) == 201


def test_committed_batches_survive_close_and_reopen(location):
    store = SqlRelayStore(location)
    add_users(store, "alice", "bob")
    batches = [[msg(envelope=f"{b}-{i}".encode()) for i in range(3)] for b in range(3)]
    for batch in batches:
        store.store_messages(batch, ROOMY)
    store.delete_messages("bob", [batches[0][0].message_id])
    store.close()

    again = SqlRelayStore(location)
    try:
        expected = [m.message_id for batch in batches for m in batch][1:]
        assert pending_ids(again, "bob") == expected
        assert again.mailbox_usage("bob") == (8, 8 * 3)
        # The idempotency log survived too, including the acknowledged message's entry.
        acked = batches[0][0]
        retry = dataclasses.replace(acked, message_id="other")
        assert again.store_messages([retry], ROOMY)[0] == SendReceipt(
            acked.message_id, acked.store_time, acked.expire_time, duplicate=True
        )
    finally:
        again.close()


def test_a_cursor_following_a_mailbox_misses_nothing_under_concurrent_writers(location):
    """Senders on two stores (two relays on one database) write to one mailbox concurrently, in
    batches that also hold messages for another mailbox, while a reader follows it with a cursor
    on `seq` as Subscribe does: the reader sees every message once, in `seq` order. (A message
    committed after one with a higher `seq` would be skipped by the cursor.)"""
    stores = [SqlRelayStore(location), SqlRelayStore(location)]
    try:
        add_users(stores[0], "bob", "carol")
        threads_per_store, per_thread = 4, 60
        stored: list[str] = []
        seen = []
        errors: list[BaseException] = []
        senders_done = threading.Event()

        def send(store: SqlRelayStore, n: int) -> None:
            try:
                rng = random.Random(n)
                count = 0
                while count < per_thread:
                    batch = [msg(sender=f"s{n}", envelope=b"%d-%d" % (n, count + i)) for i in range(rng.randint(1, 3))]
                    batch.insert(rng.randint(0, len(batch)), msg(sender=f"s{n}", recipient="carol"))
                    results = store.store_messages(batch, ROOMY)
                    assert all(isinstance(r, SendReceipt) and not r.duplicate for r in results)
                    stored.extend(r.message_id for m, r in zip(batch, results) if m.recipient == "bob")
                    count += len(batch) - 1
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        def follow() -> None:
            try:
                after = 0
                while True:
                    finished = senders_done.is_set()  # before the read: a last read after every commit
                    page = stores[1].pending_messages("bob", after, T0, 50)
                    for message in page:
                        assert message.seq > after
                        seen.append(message.message_id)
                        after = message.seq
                    if not page:
                        if finished:
                            return
                        time.sleep(0.001)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        reader = threading.Thread(target=follow)
        reader.start()
        senders = [
            threading.Thread(target=send, args=(stores[n % 2], n)) for n in range(2 * threads_per_store)
        ]
        for t in senders:
            t.start()
        for t in senders:
            t.join()
        senders_done.set()
        reader.join()
        assert errors == []
        assert len(stored) >= 2 * threads_per_store * per_thread
        assert len(seen) == len(set(seen))
        assert set(seen) == set(stored)
        assert stores[0].mailbox_usage("bob")[0] == len(stored)
    finally:
        for s in stores:
            s.close()


# -- notifications between replicas (PostgreSQL) -------------------------------------------------


def test_sqlite_store_does_not_watch(tmp_path):
    store = SqlRelayStore(str(tmp_path / "relay.db"))
    try:
        store.watch(lambda user: pytest.fail("SQLite has no other relay"), lambda: pytest.fail("nothing to reconnect"))
        add_users(store, "alice", "bob")
        store.store_messages([msg()], ROOMY)
        assert store.channel is None
    finally:
        store.close()


class Heard:
    """What a watching store was told, as a queue of recipients."""

    def __init__(self) -> None:
        self._items: list[str] = []
        self._cond = threading.Condition()
        self.reconnected = threading.Event()

    def __call__(self, user_id: str) -> None:
        with self._cond:
            self._items.append(user_id)
            self._cond.notify_all()

    def on_reconnect(self) -> None:
        self.reconnected.set()

    def next(self, count: int = 1, timeout: float = 5.0) -> list[str]:
        """The next `count` recipients heard (fails after `timeout`)."""
        with self._cond:
            assert self._cond.wait_for(lambda: len(self._items) >= count, timeout), f"heard only {self._items}"
            taken, self._items = self._items[:count], self._items[count:]
            return taken


def test_storing_notifies_each_recipient_once_per_commit(postgres_dsn):
    """Another store of the database hears of each mailbox that got new messages, once per
    transaction, and of nothing that did not commit or stored nothing."""
    writer, watcher = SqlRelayStore(postgres_dsn), SqlRelayStore(postgres_dsn)
    try:
        (schema,) = raw(postgres_dsn, "SELECT current_schema()")[0]
        assert watcher.channel == writer.channel == CHANNEL_PREFIX + schema
        heard = Heard()
        watcher.watch(heard, heard.on_reconnect)
        add_users(writer, "alice", "bob", "carol")

        first = msg(recipient="bob", client_message_id="c-1")
        results = writer.store_messages(
            [first, msg(recipient="carol"), msg(recipient="bob"), msg(recipient="nobody")], ROOMY
        )
        assert isinstance(results[3], UnknownUser)
        assert sorted(heard.next(2)) == ["bob", "carol"]

        # A duplicate, a full mailbox and a rolled-back transaction store nothing and say nothing;
        # the message to carol after them is the next thing heard.
        assert writer.store_messages([msg(recipient="bob", client_message_id="c-1")], ROOMY)[0].duplicate
        assert isinstance(writer.store_messages([msg()], MailboxLimits(2, 1 << 20))[0], MailboxFull)
        with pytest.raises(INTEGRITY_ERRORS):
            writer.store_messages([msg(), dataclasses.replace(msg(), message_id=first.message_id)], ROOMY)
        writer.store_messages([msg(recipient="carol")], ROOMY)
        assert heard.next() == ["carol"]
        time.sleep(0.2)
        assert heard.next(0) == [] and not heard.reconnected.is_set()
        with pytest.raises(AssertionError, match="heard only"):
            heard.next(timeout=0.1)
    finally:
        watcher.close()
        writer.close()


def test_watch_reconnects_after_its_connection_is_terminated(postgres_dsn):
    """A LISTEN connection the server drops is re-opened; the watcher is told to re-check
    everything (notifications were lost meanwhile) and hears later sends again."""
    name = f"relay-watch-{uuid.uuid4().hex[:8]}"
    writer, watcher = SqlRelayStore(postgres_dsn), SqlRelayStore(f"{postgres_dsn}&application_name={name}")
    try:
        heard = Heard()
        watcher.watch(heard, heard.on_reconnect)
        add_users(writer, "alice", "bob")
        terminated = raw(
            postgres_dsn,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = ? AND query ILIKE 'LISTEN%'",
            (name,),
        )
        assert terminated == [(True,)]
        assert heard.reconnected.wait(10), "the watcher did not re-open its LISTEN connection"
        writer.store_messages([msg()], ROOMY)
        assert heard.next() == ["bob"]
    finally:
        watcher.close()
        writer.close()
