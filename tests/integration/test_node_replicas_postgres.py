"""Concurrent RotateKey, CreateAlias and ScheduleKeyDeletion on two nodes never lose an update and
never leave two keys with one alias.

Two shared nodes on loopback ports chosen by the OS, on the same HSM pool (same tokens, same
domain key) and the same PostgreSQL schema, as two replicas of the shared KMS. Clients race
through the gRPC API from threads, half of them on each node; the outcome is checked through both
nodes and by reading the store directly.

One node is served in this process (`serve_node`), the other in a child process, started the same
way: two nodes are two PKCS#11 applications, as replicas are. In one process they would share
their session objects, and so see each other's loaded keys under the same labels, which never
happens between replicas.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from types import SimpleNamespace

import pytest

import client_sdk as kr
from client_sdk import KmsClient
from foundation.config import Secret
from kms_node.config import StoreConfig
from kms_node.hsm.backend import KeyVersionRef
from kms_node.service import _check_context, _encrypt_with
from kms_node.store.sql import SqlKeyStore
from node_store_helpers import raw_sql

THREADS = 8
#: What a request that lost a race may answer; anything else fails the test.
LOST_RACE = (kr.KeyStateConflictError, kr.KeyPendingDeletionError, kr.KeyDisabledError, kr.AliasExistsError)


def _serve_in_child(config, pin: str, conn) -> None:
    """A child process: serve a node with `config`, send its port, stop when told (or orphaned)."""
    from kms_node.server import NodeServer

    async def main() -> None:
        node = NodeServer(config, pin=Secret(pin))
        try:
            conn.send(await node.start())
        except BaseException as exc:
            conn.send(f"the child node did not start: {type(exc).__name__}: {exc}")
            raise
        try:
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        except EOFError:
            pass  # the test process is gone
        await node.stop(grace=1)

    asyncio.run(main())


class ChildNode:
    """A node served by `_serve_in_child` in a process of its own."""

    def __init__(self, config, pin: Secret) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self.process = context.Process(target=_serve_in_child, args=(config, pin.reveal(), child_conn), daemon=True)
        self.process.start()

    def wait_started(self, timeout: float = 60) -> "ChildNode":
        if not self._conn.poll(timeout):
            raise TimeoutError("the child node did not start in time")
        port = self._conn.recv()
        if isinstance(port, str):
            raise RuntimeError(port)
        self.target = f"127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        try:
            self._conn.send("stop")
        except OSError:
            pass
        self.process.join(15)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)


@pytest.fixture
def nodes(node_config, hsm_pool_tokens, postgres_dsn, serve_node, tmp_path):
    """Two shared nodes on one HSM pool and one PostgreSQL schema, started at the same time (so
    they also race to migrate the empty schema): this process's, and a child process's."""
    config = replace(node_config, store=StoreConfig(path=str(tmp_path / "unused.db"), dsn=postgres_dsn))
    pin = hsm_pool_tokens[2]
    child = ChildNode(config, pin)
    try:
        here = serve_node(config, pin)
        child.wait_started()
        assert not (tmp_path / "unused.db").exists()  # the SQLite path is not used with a DSN
        yield here, SimpleNamespace(target=child.target)
    finally:
        child.stop()


@pytest.fixture
def clients(nodes):
    """A client of each node, acting as tenant acme."""
    a = KmsClient(nodes[0].target, tenant="acme", timeout=60)
    b = KmsClient(nodes[1].target, tenant="acme", timeout=60)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def store(postgres_dsn):
    """The replicas' store, read directly."""
    s = SqlKeyStore(postgres_dsn)
    yield s
    s.close()


def race(jobs) -> list:
    """Run the callables from threads released together; each one's result or exception."""
    barrier = threading.Barrier(min(THREADS, len(jobs)))

    def run(job):
        barrier.wait()
        try:
            return job()
        except kr.KeyrelayError as exc:
            return exc

    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(run, jobs))


def unexpected(results) -> list:
    return [r for r in results if isinstance(r, Exception) and not isinstance(r, LOST_RACE)]


def assert_store_invariants(store, postgres_dsn, key_id: str) -> None:
    """What must hold in the store whatever the interleaving: versions 1..primary, each once; no
    alias of the tenant on two keys."""
    record = store.get_key(key_id)
    assert [v.version for v in record.versions] == list(range(1, record.primary_version + 1))
    assert len({v.wrapped for v in record.versions}) == record.primary_version  # every version its own key
    assert raw_sql(
        postgres_dsn, "SELECT tenant_id, alias FROM aliases GROUP BY tenant_id, alias HAVING COUNT(*) > 1"
    ) == []


def ciphertext_under(node, record, version: int, plaintext: bytes) -> bytes:
    """A ciphertext made under a given (not necessarily primary) version of a stored key, with
    the in-process node's HSM pool: Encrypt always uses the primary version."""
    stored = record.version(version)
    ref = KeyVersionRef(record.key_id, version, stored.wrapped)
    return node.call(node.node.pool.run(lambda session: _encrypt_with(session, ref, plaintext, _check_context({}))))


def test_racing_rotations_on_two_nodes_lose_no_version(clients, nodes, store, postgres_dsn):
    """RotateKey on one key from both nodes at once, with Encrypt between rotations: the primary
    version ends at 1 + the successful rotations, each rotation made its own version, and every
    version decrypts a ciphertext made under it, on both nodes."""
    a, b = clients
    key = a.create_key(description="rotated from two nodes")
    per_thread = 5
    made: list[tuple[int, bytes, bytes]] = []  # (version, plaintext, ciphertext) from Encrypt
    lock = threading.Lock()

    def rotate(client: KmsClient, worker: int) -> list[int]:
        versions = []
        for n in range(per_thread):
            try:
                versions.append(client.rotate_key(key.key_id).primary_version)
            except kr.KeyStateConflictError:
                pass  # lost the compare-and-set too often: nothing was written
            plaintext = b"worker %d round %d" % (worker, n)
            result = client.encrypt(key.key_id, plaintext)
            with lock:
                made.append((result.key_version, plaintext, result.ciphertext_blob))
        return versions

    results = race([lambda n=n: rotate((a, b)[n % 2], n) for n in range(THREADS)])
    assert not unexpected(results), results
    rotations = [v for versions in results for v in versions]
    assert rotations, "no rotation succeeded"
    # Each successful rotation answered with a version of its own: none was overwritten.
    assert len(set(rotations)) == len(rotations)

    final = b.describe_key(key.key_id)
    assert a.describe_key(key.key_id) == final
    assert final.primary_version == 1 + len(rotations)
    assert final.versions == tuple(range(1, final.primary_version + 1))
    assert set(rotations) == set(range(2, final.primary_version + 1))
    assert_store_invariants(store, postgres_dsn, key.key_id)

    # Ciphertexts made during the race decrypt on either node (a node's cached key of a version
    # is the stored one) ...
    for version, plaintext, ciphertext in made:
        for client in (a, b):
            decrypted = client.decrypt(ciphertext)
            assert (decrypted.plaintext, decrypted.key_version) == (plaintext, version)
    # ... and so does one made under every version.
    record = store.get_key(key.key_id)
    for version in range(1, final.primary_version + 1):
        plaintext = b"under version %d" % version
        ciphertext = ciphertext_under(nodes[0], record, version, plaintext)
        for client in (a, b):
            assert client.decrypt(ciphertext).plaintext == plaintext


def test_one_alias_raced_from_two_nodes_names_exactly_one_key(clients, store, postgres_dsn):
    """CreateAlias of one alias on different keys from both nodes: one call wins, every other
    gets AliasExistsError, and afterwards exactly one key holds the alias, seen alike from both
    nodes."""
    a, b = clients
    keys = [(a, b)[n % 2].create_key(description=f"candidate {n}").key_id for n in range(THREADS)]
    for round_ in range(4):
        alias = f"alias/contested-{round_}"
        results = race([lambda n=n, k=k: (a, b)[n % 2].create_alias(alias, k) for n, k in enumerate(keys)])
        assert not unexpected(results), results
        winners = [k for k, r in zip(keys, results) if not isinstance(r, Exception)]
        assert len(winners) == 1, results
        assert all(isinstance(r, kr.AliasExistsError) for r in results if isinstance(r, Exception))
        assert a.describe_key(alias).key_id == b.describe_key(alias).key_id == winners[0]
        holders = [k for k in keys if alias in b.describe_key(k).aliases]
        assert holders == winners
        assert store.resolve_alias("acme", alias) == winners[0]
        assert raw_sql(postgres_dsn, "SELECT key_id FROM aliases WHERE alias = ?", (alias,)) == [(winners[0],)]
    for k in keys:
        assert_store_invariants(store, postgres_dsn, k)

    # New keys racing for one alias at creation: one is created with it.
    results = race([lambda n=n: (a, b)[n % 2].create_key(alias="alias/born-contested") for n in range(THREADS)])
    assert not unexpected(results), results
    created = [r for r in results if not isinstance(r, Exception)]
    assert len(created) == 1 and created[0].aliases == ("alias/born-contested",)
    assert a.describe_key("alias/born-contested").key_id == created[0].key_id


def test_deletion_scheduled_while_the_other_node_rotates_and_enables(clients, store, postgres_dsn):
    """ScheduleKeyDeletion on one node while RotateKey, EnableKey and DisableKey run on both: the
    deletion is scheduled once, no rotation lands after it, no rotation is lost, and the key's
    versions all decrypt once the deletion is cancelled."""
    a, b = clients
    for trial in range(3):
        key = a.create_key(description=f"trial {trial}")
        before = a.encrypt(key.key_id, b"before the race")
        stop, warmed = threading.Event(), threading.Event()
        rotated = []

        def schedule():
            warmed.wait(30)  # in the thick of it: rotations are landing
            try:
                # A lost compare-and-set race is refused with "retry" (never applied halfway):
                # retry as a client would, until the rotations let it through.
                deadline = time.monotonic() + 60
                while True:
                    try:
                        return a.schedule_key_deletion(key.key_id, pending_window_days=7)
                    except kr.KeyStateConflictError:
                        if time.monotonic() > deadline:
                            raise
            finally:
                stop.set()

        def rotate(client: KmsClient) -> list[int]:
            versions = []
            while not stop.is_set():
                try:
                    versions.append(client.rotate_key(key.key_id).primary_version)
                except LOST_RACE:
                    continue
                rotated.append(versions[-1])
                if len(rotated) >= 4:
                    warmed.set()
            return versions

        def toggle(client: KmsClient) -> int:
            flips = 0
            while not stop.is_set():
                try:
                    client.disable_key(key.key_id)
                    client.enable_key(key.key_id)
                    flips += 1
                except LOST_RACE:
                    pass
            return flips

        jobs = [schedule, lambda: rotate(a), lambda: rotate(b), lambda: rotate(b), lambda: toggle(a), lambda: toggle(b)]
        results = race(jobs)
        assert not unexpected(results), results
        scheduled = results[0]
        assert isinstance(scheduled, kr.KeyMetadata), scheduled
        rotations = [v for versions in results[1:4] for v in versions]
        assert len(rotations) >= 4 and len(set(rotations)) == len(rotations)

        final = b.describe_key(key.key_id)
        assert final.state == "PENDING_DELETION" and final.deletion_time == scheduled.deletion_time
        assert final.primary_version == 1 + len(rotations)
        # Nothing changed the key after the deletion was scheduled (rotations and toggles lost).
        assert final.primary_version == scheduled.primary_version and final.versions == scheduled.versions
        with pytest.raises(kr.KeyPendingDeletionError):
            a.rotate_key(key.key_id)
        with pytest.raises(kr.KeyPendingDeletionError):
            b.enable_key(key.key_id)
        # A second schedule from the other node is refused, not applied twice.
        with pytest.raises(kr.KeyPendingDeletionError):
            b.schedule_key_deletion(key.key_id, pending_window_days=30)
        record = store.get_key(key.key_id)
        assert (record.state, record.primary_version) == ("PENDING_DELETION", final.primary_version)
        assert_store_invariants(store, postgres_dsn, key.key_id)

        assert b.cancel_key_deletion(key.key_id).state == "DISABLED"
        assert a.enable_key(key.key_id).state == "ENABLED"
        assert b.decrypt(before.ciphertext_blob).plaintext == b"before the race"
        after = a.encrypt(key.key_id, b"after the race")
        assert after.key_version == final.primary_version
        assert b.decrypt(after.ciphertext_blob).plaintext == b"after the race"
