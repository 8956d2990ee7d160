"""Unit tests of kms_node/service.py: KeyService over a fake HSM and a SqlKeyStore."""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import replace

import pytest

from fake_hsm import FakeHsm
from foundation import blob_formats as blobs
from foundation.errors import (
    AliasExistsError,
    AliasNotFoundError,
    BatchTooLargeError,
    CiphertextAuthenticationError,
    InvalidArgumentError,
    InvalidEncryptionContextError,
    KeyDisabledError,
    KeyExistsError,
    KeyNotFoundError,
    KeyPendingDeletionError,
    KeyStateConflictError,
    KeyVersionRetiredError,
    MalformedCiphertextError,
    PayloadTooLargeError,
    SealedRecordMismatchError,
)
from kms_node.service import Caller, CryptoResult, KeyService
from kms_node.store.base import KeyRecord, KeyState, VersionRecord
from kms_node.store.sql import SqlKeyStore

DAY = 86400.0
T0 = 1_750_000_000.0
A = Caller("acme")
B = Caller("globex")
CTX = {"purpose": "test", "order": "42"}


class Clock:
    """A settable clock; each reading advances it a millisecond so create times are distinct."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        self.now += 0.001
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def hsm() -> FakeHsm:
    return FakeHsm()


@pytest.fixture
def store(tmp_path):
    s = SqlKeyStore(str(tmp_path / "node.db"))
    yield s
    s.close()


@pytest.fixture
def service(store, hsm, clock):
    svc = KeyService(store, hsm, clock=clock)
    yield svc
    svc.close()


@pytest.fixture
async def key(service) -> KeyRecord:
    """An enabled key of tenant A with the alias alias/main."""
    return await service.create_key(A, description="main key", alias="alias/main")


# -- create / describe / encrypt / decrypt ------------------------------------------------------


async def test_create_key(service, key, store):
    """A new key is ENABLED at version 1, recorded with its wrapped blob and alias."""
    assert (key.state, key.primary_version, key.min_decryption_version) == (KeyState.ENABLED, 1, 1)
    assert key.tenant_id == "acme" and key.aliases == ("alias/main",)
    assert store.get_key(key.key_id).version(1).wrapped == key.versions[0].wrapped
    assert await service.describe_key(A, "alias/main") == await service.describe_key(A, key.key_id)


async def test_create_key_refusals(service, key):
    """Duplicate alias, duplicate key id and malformed arguments are refused with the right class."""
    with pytest.raises(AliasExistsError):
        await service.create_key(A, alias="alias/main")
    fixed = str(uuid.uuid4())
    await service.create_key(A, key_id=fixed)
    with pytest.raises(KeyExistsError):
        await service.create_key(A, key_id=fixed)
    # A retry of a create the node already made (a crash lost its answer) names the same key id
    # and alias: it learns the key exists, not that the alias (which that create took) is taken.
    retried = str(uuid.uuid4())
    await service.create_key(A, key_id=retried, alias="alias/retried")
    with pytest.raises(KeyExistsError):
        await service.create_key(A, key_id=retried, alias="alias/retried")
    for kwargs in ({"alias": "main"}, {"key_id": fixed.upper()}, {"key_spec": "RSA_2048"}, {"instance_id": "x"},
                   {"tags": {"": "v"}}, {"description": "d" * 1025}):
        with pytest.raises(InvalidArgumentError):
            await service.create_key(A, **kwargs)


async def test_encrypt_decrypt_round_trip(service, key):
    """A ciphertext decrypts to the plaintext with the same context, named by id or alias."""
    result = await service.encrypt(A, "alias/main", b"secret data", CTX)
    assert (result.key_id, result.key_version) == (key.key_id, 1)
    assert len(result.ciphertext) == blobs.HEADER_BYTES + len(b"secret data") + blobs.TAG_BYTES
    assert blobs.peek_key_id(result.ciphertext) == key.key_id
    # The context's order does not matter.
    decrypted = await service.decrypt(A, result.ciphertext, dict(reversed(list(CTX.items()))))
    assert decrypted == CryptoResult(key.key_id, 1, plaintext=b"secret data")
    assert (await service.decrypt(A, result.ciphertext, CTX, expected_ref="alias/main")).plaintext == b"secret data"


async def test_decrypt_refuses_other_context_or_tampering(service, key):
    """A different context, or any altered byte (header included), fails authentication."""
    blob = (await service.encrypt(A, key.key_id, b"secret", CTX)).ciphertext
    with pytest.raises(CiphertextAuthenticationError):
        await service.decrypt(A, blob, {"purpose": "test"})
    with pytest.raises(CiphertextAuthenticationError):
        await service.decrypt(A, blob, {})
    for position in (25, blobs.HEADER_BYTES, len(blob) - 1):  # IV, ciphertext, tag
        altered = bytearray(blob)
        altered[position] ^= 0x01
        with pytest.raises(CiphertextAuthenticationError):
            await service.decrypt(A, bytes(altered), CTX)
    with pytest.raises(MalformedCiphertextError):
        await service.decrypt(A, blob[:40], CTX)


async def test_decrypt_with_wrong_expected_key(service, key):
    """Naming another key than the one in the ciphertext is refused."""
    other = await service.create_key(A)
    blob = (await service.encrypt(A, key.key_id, b"x", {})).ciphertext
    with pytest.raises(InvalidArgumentError, match="made under key"):
        await service.decrypt(A, blob, {}, expected_ref=other.key_id)


async def test_encrypt_argument_checks(service, key):
    """Empty or oversized plaintext, reserved context keys and bad references are refused."""
    with pytest.raises(InvalidArgumentError):
        await service.encrypt(A, key.key_id, b"", {})
    with pytest.raises(PayloadTooLargeError):
        await service.encrypt(A, key.key_id, b"x" * 4097, {})
    await service.encrypt(A, key.key_id, b"x" * 4096, {})
    with pytest.raises(InvalidEncryptionContextError):
        await service.encrypt(A, key.key_id, b"x", {"keyrelay:purpose": "sealed-public-key"})
    for ref in ("", "main", key.key_id.upper()):
        with pytest.raises(InvalidArgumentError):
            await service.encrypt(A, ref, b"x", {})
    with pytest.raises(AliasNotFoundError):
        await service.encrypt(A, "alias/nothing", b"x", {})
    with pytest.raises(KeyNotFoundError):
        await service.encrypt(A, str(uuid.uuid4()), b"x", {})


async def test_generate_data_key(service, key):
    """A data key's ciphertext decrypts to the data key; without_plaintext returns none."""
    result = await service.generate_data_key(A, key.key_id, 0, CTX)
    assert len(result.plaintext) == 32
    assert (await service.decrypt(A, result.ciphertext, CTX)).plaintext == result.plaintext
    bare = await service.generate_data_key(A, key.key_id, 16, CTX, with_plaintext=False)
    assert bare.plaintext == b""
    assert len((await service.decrypt(A, bare.ciphertext, CTX)).plaintext) == 16
    with pytest.raises(InvalidArgumentError):
        await service.generate_data_key(A, key.key_id, 24, CTX)


async def test_re_encrypt_moves_ciphertext_to_another_key(service, key):
    """ReEncrypt gives a ciphertext under the destination key and context with the same plaintext."""
    destination = await service.create_key(A, alias="alias/dest")
    blob = (await service.encrypt(A, key.key_id, b"moving", CTX)).ciphertext
    source, moved = await service.re_encrypt(A, blob, CTX, "alias/dest", {"new": "ctx"})
    assert (source.key_id, moved.key_id) == (key.key_id, destination.key_id)
    assert (await service.decrypt(A, moved.ciphertext, {"new": "ctx"})).plaintext == b"moving"
    with pytest.raises(CiphertextAuthenticationError):
        await service.re_encrypt(A, blob, {"wrong": "ctx"}, "alias/dest", {})


# -- lifecycle ----------------------------------------------------------------------------------


async def test_disable_then_enable(service, key):
    """A disabled key refuses encrypt and decrypt; enabling it makes both work again."""
    blob = (await service.encrypt(A, key.key_id, b"before", CTX)).ciphertext
    disabled = await service.disable_key(A, "alias/main")
    assert disabled.state == KeyState.DISABLED
    with pytest.raises(KeyDisabledError):
        await service.encrypt(A, key.key_id, b"x", CTX)
    with pytest.raises(KeyDisabledError):
        await service.decrypt(A, blob, CTX)
    with pytest.raises(KeyDisabledError):
        await service.generate_data_key(A, key.key_id, 32, CTX)
    with pytest.raises(KeyDisabledError):
        await service.rotate_key(A, key.key_id)
    # Disabling twice changes nothing (no new revision).
    assert (await service.disable_key(A, key.key_id)).revision == disabled.revision
    assert (await service.enable_key(A, key.key_id)).state == KeyState.ENABLED
    assert (await service.decrypt(A, blob, CTX)).plaintext == b"before"


@pytest.mark.parametrize("days", [-1, 1, 6, 31, 365])
async def test_schedule_deletion_window_out_of_range(service, key, days):
    """Deletion windows outside 7-30 days are refused and the key stays enabled."""
    with pytest.raises(InvalidArgumentError, match="7-30"):
        await service.schedule_key_deletion(A, key.key_id, days)
    assert (await service.describe_key(A, key.key_id)).state == KeyState.ENABLED


@pytest.mark.parametrize(("days", "expected_days"), [(7, 7), (30, 30), (0, 30)])
async def test_schedule_deletion_window(service, key, clock, days, expected_days):
    """7 and 30 days are accepted; 0 means the default 30. The deletion time is now + window."""
    before = clock.now
    pending = await service.schedule_key_deletion(A, key.key_id, days)
    assert pending.state == KeyState.PENDING_DELETION
    assert pending.deletion_time == pytest.approx(before + expected_days * DAY, abs=1.0)


async def test_pending_deletion_refuses_use_and_changes(service, key):
    """A key pending deletion refuses cryptography and every change but cancel."""
    blob = (await service.encrypt(A, key.key_id, b"x", CTX)).ciphertext
    await service.schedule_key_deletion(A, key.key_id, 7)
    with pytest.raises(KeyPendingDeletionError):
        await service.encrypt(A, key.key_id, b"x", CTX)
    with pytest.raises(KeyPendingDeletionError):
        await service.decrypt(A, blob, CTX)
    with pytest.raises(KeyPendingDeletionError):
        await service.schedule_key_deletion(A, key.key_id, 7)
    with pytest.raises(KeyPendingDeletionError):
        await service.enable_key(A, key.key_id)
    with pytest.raises(KeyPendingDeletionError):
        await service.disable_key(A, key.key_id)
    with pytest.raises(KeyPendingDeletionError):
        await service.update_key(A, key.key_id, description="new")
    with pytest.raises(KeyPendingDeletionError):
        await service.create_alias(A, "alias/another", key.key_id)
    with pytest.raises(KeyPendingDeletionError):
        await service.rotate_key(A, key.key_id)


async def test_cancel_deletion_returns_disabled(service, key):
    """Cancelling leaves the key DISABLED with no deletion time; it must be enabled to be used."""
    blob = (await service.encrypt(A, key.key_id, b"kept", CTX)).ciphertext
    await service.schedule_key_deletion(A, key.key_id, 10)
    cancelled = await service.cancel_key_deletion(A, "alias/main")
    assert (cancelled.state, cancelled.deletion_time) == (KeyState.DISABLED, None)
    with pytest.raises(KeyDisabledError):
        await service.decrypt(A, blob, CTX)
    await service.enable_key(A, key.key_id)
    assert (await service.decrypt(A, blob, CTX)).plaintext == b"kept"
    with pytest.raises(KeyStateConflictError):
        await service.cancel_key_deletion(A, key.key_id)


async def test_rotation_keeps_old_versions_decryptable(service, key, hsm):
    """After rotation new ciphertexts use version 2 (a new CMK) and version-1 ciphertexts still decrypt."""
    old = await service.encrypt(A, key.key_id, b"old data", CTX)
    rotated = await service.rotate_key(A, "alias/main")
    assert rotated.primary_version == 2
    assert [v.version for v in rotated.versions] == [1, 2]
    assert rotated.version(1).wrapped != rotated.version(2).wrapped
    assert len(hsm.keys) == 2
    new = await service.encrypt(A, key.key_id, b"new data", CTX)
    assert (old.key_version, new.key_version) == (1, 2)
    assert (await service.decrypt(A, old.ciphertext, CTX)).plaintext == b"old data"
    assert (await service.decrypt(A, new.ciphertext, CTX)) == CryptoResult(key.key_id, 2, plaintext=b"new data")


async def test_min_decryption_version_retires_old_ciphertexts(service, key):
    """Raising min_decryption_version refuses older ciphertexts; lowering it again restores them."""
    old = (await service.encrypt(A, key.key_id, b"old", CTX)).ciphertext
    await service.rotate_key(A, key.key_id)
    new = (await service.encrypt(A, key.key_id, b"new", CTX)).ciphertext
    updated = await service.update_key(A, key.key_id, min_decryption_version=2)
    assert updated.min_decryption_version == 2
    with pytest.raises(KeyVersionRetiredError):
        await service.decrypt(A, old, CTX)
    assert (await service.decrypt(A, new, CTX)).plaintext == b"new"
    for bad in (0, 3):
        with pytest.raises(InvalidArgumentError):
            await service.update_key(A, key.key_id, min_decryption_version=bad)
    await service.update_key(A, key.key_id, min_decryption_version=1)
    assert (await service.decrypt(A, old, CTX)).plaintext == b"old"


async def test_ciphertext_naming_a_version_the_key_lacks(service, key, hsm):
    """A well-formed blob naming a version above the key's newest is malformed."""
    blob = (await service.encrypt(A, key.key_id, b"x", {})).ciphertext
    parsed = blobs.parse_ciphertext(blob)
    forged = blobs.encode_header(key.key_id, 5, parsed.iv) + parsed.ciphertext
    with pytest.raises(MalformedCiphertextError, match="version 5"):
        await service.decrypt(A, forged, {})


async def test_aliases(service, key):
    """Aliases can be added and removed; a removed alias no longer resolves."""
    updated = await service.create_alias(A, "alias/second", key.key_id)
    assert updated.aliases == ("alias/main", "alias/second")
    with pytest.raises(AliasExistsError):
        await service.create_alias(A, "alias/second", key.key_id)
    assert await service.delete_alias(A, "alias/second") == key.key_id
    with pytest.raises(AliasNotFoundError):
        await service.delete_alias(A, "alias/second")
    with pytest.raises(AliasNotFoundError):
        await service.describe_key(A, "alias/second")
    with pytest.raises(InvalidArgumentError):
        await service.create_alias(A, "no-prefix", key.key_id)


async def test_alias_with_trailing_newline_is_refused(service):
    """An alias is 'alias/' followed by 1-250 of A-Z a-z 0-9 / _ - only."""
    with pytest.raises(InvalidArgumentError):
        await service.create_key(A, alias="alias/main\n")


# -- tenant isolation ---------------------------------------------------------------------------


async def test_other_tenant_cannot_see_or_use_the_key(service, key):
    """Tenant B gets KeyNotFoundError for A's key by id, AliasNotFoundError by alias (B has no
    such alias), for reads, use and changes."""
    blob = (await service.encrypt(A, key.key_id, b"A's secret", CTX)).ciphertext
    for ref, error in ((key.key_id, KeyNotFoundError), ("alias/main", AliasNotFoundError)):
        with pytest.raises(error):
            await service.describe_key(B, ref)
        with pytest.raises(error):
            await service.encrypt(B, ref, b"x", CTX)
        with pytest.raises(error):
            await service.disable_key(B, ref)
        with pytest.raises(error):
            await service.schedule_key_deletion(B, ref, 7)
        with pytest.raises(error):
            await service.rotate_key(B, ref)
        with pytest.raises(error):
            await service.create_alias(B, "alias/stolen", ref)
    with pytest.raises(KeyNotFoundError):
        await service.decrypt(B, blob, CTX)
    with pytest.raises(AliasNotFoundError):
        await service.delete_alias(B, "alias/main")
    # A's key is untouched by all of that.
    still = await service.describe_key(A, key.key_id)
    assert (still.state, still.primary_version, still.aliases) == (KeyState.ENABLED, 1, ("alias/main",))


async def test_other_tenant_does_not_list_the_key(service, key):
    """list_keys shows a tenant only its own keys."""
    own = await service.create_key(B, alias="alias/main")  # same alias name, B's own key
    listed_b, _ = await service.list_keys(B)
    listed_a, _ = await service.list_keys(A)
    assert [r.key_id for r in listed_b] == [own.key_id]
    assert [r.key_id for r in listed_a] == [key.key_id]
    assert (await service.describe_key(B, "alias/main")).key_id == own.key_id


async def test_key_id_error_looks_like_a_missing_key(service, key):
    """Another tenant's key and a key that never existed give the same error class."""
    missing = str(uuid.uuid4())
    with pytest.raises(KeyNotFoundError) as foreign:
        await service.describe_key(B, key.key_id)
    with pytest.raises(KeyNotFoundError) as absent:
        await service.describe_key(B, missing)
    assert str(foreign.value).replace(key.key_id, missing) == str(absent.value)


# -- listing ------------------------------------------------------------------------------------


async def test_list_keys_pages(service):
    """Pages come in creation order, with a token until the last page."""
    created = [(await service.create_key(A, description=str(n))).key_id for n in range(5)]
    seen, token, pages = [], "", 0
    while True:
        page, token = await service.list_keys(A, page_size=2, page_token=token)
        pages += 1
        seen += [r.key_id for r in page]
        if not token:
            break
    assert seen == created
    assert pages == 3


@pytest.mark.parametrize("token", ["garbage!", base64.urlsafe_b64encode(b"{}").decode(),
                                   base64.urlsafe_b64encode(b"[1]").decode(), base64.urlsafe_b64encode(b"null").decode()])
async def test_list_keys_bad_token(service, token):
    """A token the service did not issue is refused as an invalid argument."""
    with pytest.raises(InvalidArgumentError, match="page_token"):
        await service.list_keys(A, page_token=token)


async def test_creating_keys_do_not_cut_the_listing_short(service, store):
    """Keys being created are hidden, but every ENABLED key after them is still reachable by paging."""
    for n, state in enumerate([KeyState.ENABLED, KeyState.CREATING, KeyState.ENABLED, KeyState.ENABLED]):
        store.create_key(
            KeyRecord(
                key_id=f"00000000-0000-4000-8000-00000000000{n}", tenant_id="acme", description="", tags={},
                state=state, instance_id="", key_spec="AES_256", primary_version=1, min_decryption_version=1,
                create_time=float(n), versions=(VersionRecord(1, float(n), b"w"),),
            ),
            None,
        )
    seen, token = [], ""
    while True:
        page, token = await service.list_keys(A, page_size=2, page_token=token)
        seen += [r.key_id[-1] for r in page]
        if not token:
            break
    assert seen == ["0", "2", "3"]
    # A key being created is not usable or describable yet.
    with pytest.raises(KeyStateConflictError, match="being created"):
        await service.describe_key(A, "00000000-0000-4000-8000-000000000001")


# -- purge ---------------------------------------------------------------------------------------


async def test_purge_due_keys_with_injected_clock(service, key, clock):
    """A key is purged only once its window has passed; a cancelled key never is."""
    spared = await service.create_key(A, alias="alias/spared")
    scheduled = await service.schedule_key_deletion(A, key.key_id, 7)
    await service.schedule_key_deletion(A, spared.key_id, 7)
    await service.cancel_key_deletion(A, spared.key_id)

    clock.advance(7 * DAY - 60)
    assert clock.now < scheduled.deletion_time
    assert await service.purge_due_keys() == 0
    assert (await service.describe_key(A, key.key_id)).state == KeyState.PENDING_DELETION

    clock.advance(120)
    assert await service.purge_due_keys() == 1
    with pytest.raises(KeyNotFoundError):
        await service.describe_key(A, key.key_id)
    with pytest.raises(AliasNotFoundError):
        await service.describe_key(A, "alias/main")
    assert (await service.describe_key(A, spared.key_id)).state == KeyState.DISABLED
    assert await service.purge_due_keys() == 0
    # The alias of the purged key is free again.
    await service.create_key(A, alias="alias/main")


async def test_purge_skips_a_key_cancelled_after_it_was_listed(tmp_path, hsm, clock):
    """If a deletion is cancelled between listing due keys and deleting them, the key survives."""

    class CancelRacingStore(SqlKeyStore):
        def keys_due_for_deletion(self, now):
            due = super().keys_due_for_deletion(now)
            for key_id in due:  # another replica cancels the deletion right now
                record = self.get_key(key_id)
                self.update_key(record.evolve(state=KeyState.DISABLED, deletion_time=None))
            return due

    store = CancelRacingStore(str(tmp_path / "racing.db"))
    service = KeyService(store, hsm, clock=clock)
    try:
        key = await service.create_key(A)
        await service.schedule_key_deletion(A, key.key_id, 7)
        clock.advance(8 * DAY)
        assert await service.purge_due_keys() == 0
        assert (await service.describe_key(A, key.key_id)).state == KeyState.DISABLED
    finally:
        service.close()
        store.close()


# -- batches -------------------------------------------------------------------------------------


async def test_batch_decrypt_per_item_errors(service, key):
    """Each item gets its own result or error, in request order; one bad item fails nothing else."""
    disabled = await service.create_key(A)
    foreign = await service.create_key(B)
    good = (await service.encrypt(A, key.key_id, b"one", CTX)).ciphertext
    good2 = (await service.encrypt(A, key.key_id, b"two", {})).ciphertext
    of_disabled = (await service.encrypt(A, disabled.key_id, b"x", {})).ciphertext
    of_b = (await service.encrypt(B, foreign.key_id, b"x", {})).ciphertext
    await service.disable_key(A, disabled.key_id)

    results = await service.batch_decrypt(
        A,
        [
            (good, CTX),
            (good[:10], CTX),
            (good, {"other": "ctx"}),
            (of_disabled, {}),
            (of_b, {}),
            (good2, {"keyrelay:x": "y"}),
            (good2, {}),
        ],
    )
    assert results[0] == CryptoResult(key.key_id, 1, plaintext=b"one")
    assert isinstance(results[1], MalformedCiphertextError)
    assert isinstance(results[2], CiphertextAuthenticationError)
    assert isinstance(results[3], KeyDisabledError)
    assert isinstance(results[4], KeyNotFoundError)
    assert isinstance(results[5], InvalidEncryptionContextError)
    assert results[6] == CryptoResult(key.key_id, 1, plaintext=b"two")


async def test_batch_decrypt_many_items_keep_order(service, key, hsm):
    """More items than one HSM chunk (64) still come back in order."""
    items = [((await service.encrypt(A, key.key_id, str(n).encode(), {})).ciphertext, {}) for n in range(150)]
    runs_before = hsm.run_calls
    results = await service.batch_decrypt(A, items)
    assert [r.plaintext for r in results] == [str(n).encode() for n in range(150)]
    assert hsm.run_calls - runs_before == 3  # chunks of 64, 64 and 22


async def test_batch_size_limits(service):
    """An empty batch and a batch over 1000 items are refused as a whole."""
    with pytest.raises(InvalidArgumentError):
        await service.batch_decrypt(A, [])
    with pytest.raises(BatchTooLargeError):
        await service.batch_decrypt(A, [(b"x", {})] * 1001)
    with pytest.raises(BatchTooLargeError):
        await service.batch_generate_data_key(A, [("alias/x", 32, {})] * 1001)


async def test_batch_generate_data_key_per_item_errors(service, key):
    """Good items yield decryptable data keys; bad size, bad ref, unknown and disabled keys fail alone."""
    disabled = await service.create_key(A)
    await service.disable_key(A, disabled.key_id)
    results = await service.batch_generate_data_key(
        A,
        [
            ("alias/main", 16, CTX),
            ("alias/main", 17, CTX),
            ("not-a-ref", 32, {}),
            ("alias/missing", 32, {}),
            (disabled.key_id, 32, {}),
            (key.key_id, 0, {"keyrelay:x": "1"}),
            (key.key_id, 64, {}),
        ],
    )
    assert isinstance(results[0], CryptoResult) and len(results[0].plaintext) == 16
    assert (await service.decrypt(A, results[0].ciphertext, CTX)).plaintext == results[0].plaintext
    assert isinstance(results[1], InvalidArgumentError)
    assert isinstance(results[2], InvalidArgumentError)
    assert isinstance(results[3], AliasNotFoundError)
    assert isinstance(results[4], KeyDisabledError)
    assert isinstance(results[5], InvalidEncryptionContextError)
    assert len(results[6].plaintext) == 64 and results[6].key_id == key.key_id


# -- sealed public keys ----------------------------------------------------------------------------


async def test_seal_and_open_public_key(service, key):
    """A sealed bundle opens for the same user, version and key."""
    bundle = b"-----public key bundle-----" * 3
    sealed, info = await service.seal_public_key(A, "alias/main", "alice", bundle, 3)
    assert (sealed.user_id, sealed.bundle_version, info.key_id) == ("alice", 3, key.key_id)
    assert bundle not in sealed.sealed_bundle
    opened = await service.open_public_key(A, sealed)
    assert opened == CryptoResult(key.key_id, 1, plaintext=bundle)


async def test_open_for_wrong_user_or_version_is_a_mismatch(service, key):
    """A record relabelled for another user or version does not open."""
    sealed, _ = await service.seal_public_key(A, key.key_id, "alice", b"bundle", 3)
    with pytest.raises(SealedRecordMismatchError, match="'mallory'"):
        await service.open_public_key(A, replace(sealed, user_id="mallory"))
    with pytest.raises(SealedRecordMismatchError):
        await service.open_public_key(A, replace(sealed, bundle_version=4))


async def test_sealed_records_cannot_be_swapped_between_users(service, key):
    """Alice's sealed bundle with Bob's wrapped DEK (or the reverse) does not open."""
    alice, _ = await service.seal_public_key(A, key.key_id, "alice", b"alice-bundle", 1)
    bob, _ = await service.seal_public_key(A, key.key_id, "bob", b"bob-bundle", 1)
    with pytest.raises(SealedRecordMismatchError):
        await service.open_public_key(A, replace(bob, sealed_bundle=alice.sealed_bundle))
    with pytest.raises(SealedRecordMismatchError):
        await service.open_public_key(A, replace(alice, user_id="bob"))


async def test_tampered_or_foreign_wrapped_dek(service, key):
    """An altered wrapped DEK, or an ordinary ciphertext passed as one, is a mismatch."""
    sealed, _ = await service.seal_public_key(A, key.key_id, "alice", b"bundle", 1)
    altered = bytearray(sealed.wrapped_dek)
    altered[-1] ^= 0x01
    with pytest.raises(SealedRecordMismatchError):
        await service.open_public_key(A, replace(sealed, wrapped_dek=bytes(altered)))
    plain_ciphertext = (await service.encrypt(A, key.key_id, b"\x00" * 32, {})).ciphertext
    with pytest.raises(SealedRecordMismatchError):
        await service.open_public_key(A, replace(sealed, wrapped_dek=plain_ciphertext))


async def test_wrapped_dek_is_not_decryptable_through_decrypt(service, key):
    """The DEK's reserved context cannot be supplied by a caller, so Decrypt cannot unwrap it."""
    sealed, _ = await service.seal_public_key(A, key.key_id, "alice", b"bundle", 1)
    with pytest.raises(InvalidEncryptionContextError):
        await service.decrypt(A, sealed.wrapped_dek, {"keyrelay:purpose": "sealed-public-key"})
    with pytest.raises(CiphertextAuthenticationError):
        await service.decrypt(A, sealed.wrapped_dek, {})


async def test_other_tenant_cannot_open(service, key):
    """Tenant B cannot open A's sealed record: A's key is not found for B."""
    sealed, _ = await service.seal_public_key(A, key.key_id, "alice", b"bundle", 1)
    with pytest.raises(KeyNotFoundError):
        await service.open_public_key(B, sealed)


async def test_seal_argument_checks(service, key):
    """Bad user ids, empty or oversized bundles and version 0 are refused."""
    for user_id in ("", "Alice", "a" * 65, "al ice"):
        with pytest.raises(InvalidArgumentError):
            await service.seal_public_key(A, key.key_id, user_id, b"b", 1)
    with pytest.raises(InvalidArgumentError):
        await service.seal_public_key(A, key.key_id, "alice", b"", 1)
    with pytest.raises(PayloadTooLargeError):
        await service.seal_public_key(A, key.key_id, "alice", b"b" * 16385, 1)
    with pytest.raises(InvalidArgumentError):
        await service.seal_public_key(A, key.key_id, "alice", b"b", 0)


async def test_user_id_with_trailing_newline_is_refused(service, key):
    """A user id is 1-64 of a-z 0-9 . _ - only."""
    with pytest.raises(InvalidArgumentError):
        await service.seal_public_key(A, key.key_id, "alice\n", b"bundle", 1)


async def test_generate_random(service):
    """1-1024 random bytes; anything else is refused."""
    assert len(await service.generate_random(1024)) == 1024
    for bad in (0, 1025):
        with pytest.raises(InvalidArgumentError):
            await service.generate_random(bad)
