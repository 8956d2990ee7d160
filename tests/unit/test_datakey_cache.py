"""`DataKeyCache`: the age, message and byte limits, bypass, LRU capacity, threads, secrecy."""

from __future__ import annotations

import io
import os
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from fake_clock import Clock

from client_sdk.datakey_cache import DataKeyCache
from client_sdk.envelope import MIN_CHUNK_SIZE, decrypt_stream, encrypt_stream
from client_sdk.types import DataKey, DecryptResult


class CountingKms:
    """GenerateDataKey only, counting calls; the 'blob' is a serial number (and Decrypt reverses it)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self._deks: dict[bytes, bytes] = {}
        self._lock = threading.Lock()

    def generate_data_key(self, key_id, *, number_of_bytes=32, context=None, timeout=None) -> DataKey:
        with self._lock:
            self.calls.append((key_id, dict(context or {})))
            blob = b"blob-%d" % len(self.calls)
        self._deks[blob] = os.urandom(number_of_bytes)
        return DataKey(self._deks[blob], blob, key_id, 1)

    def decrypt(self, ciphertext_blob, *, context=None, key_id="", timeout=None) -> DecryptResult:
        return DecryptResult(self._deks[ciphertext_blob], "key", 1)


@pytest.fixture
def kms() -> CountingKms:
    return CountingKms()


@pytest.fixture
def clock() -> Clock:
    return Clock(step=0)


def _blobs(cache, kms, n: int, key_id: str = "key", context=None, size: int | None = 10) -> list[bytes]:
    return [cache.data_key(kms, key_id, context=context, message_size=size)[0].ciphertext_blob for _ in range(n)]


def test_max_messages_bounds_the_uses_of_one_key(kms, clock):
    cache = DataKeyCache(max_age_seconds=60, max_messages=100, clock=clock)
    blobs = _blobs(cache, kms, 1000)
    assert len(kms.calls) == 10
    assert set(Counter(blobs).values()) == {100}
    assert cache.stats.hits == 990 and cache.stats.misses == 10


def test_the_first_use_is_a_miss_and_the_rest_hits(kms, clock):
    cache = DataKeyCache(max_age_seconds=60, max_messages=3, clock=clock)
    assert [cache.data_key(kms, "key", message_size=1)[1] for _ in range(4)] == [False, True, True, False]


def test_a_key_is_not_used_once_max_age_has_passed(kms, clock):
    cache = DataKeyCache(max_age_seconds=30, clock=clock)
    first = _blobs(cache, kms, 1)[0]
    clock.advance(29.9)
    assert _blobs(cache, kms, 1) == [first]
    clock.advance(0.1)  # exactly max_age old: too old
    second = _blobs(cache, kms, 1)[0]
    assert second != first and len(kms.calls) == 2
    clock.advance(29)
    assert _blobs(cache, kms, 1) == [second], "age counts from when the new key was made"


def test_max_bytes_counts_every_message_against_the_key(kms, clock):
    cache = DataKeyCache(max_age_seconds=60, max_bytes=100, clock=clock)
    a = [cache.data_key(kms, "key", message_size=s)[0].ciphertext_blob for s in (40, 40, 20)]
    assert len(set(a)) == 1, "40 + 40 + 20 = 100 fits exactly"
    b = cache.data_key(kms, "key", message_size=1)[0].ciphertext_blob
    assert b != a[0] and len(kms.calls) == 2
    assert cache.data_key(kms, "key", message_size=99)[0].ciphertext_blob == b


def test_an_unknown_size_bypasses_a_byte_limited_cache(kms, clock):
    cache = DataKeyCache(max_age_seconds=60, max_bytes=1000, clock=clock)
    cached = _blobs(cache, kms, 1)[0]
    unknown = _blobs(cache, kms, 2, size=None)
    assert cached not in unknown and len(set(unknown)) == 2, "each unknown-size message gets a fresh key"
    assert _blobs(cache, kms, 1) == [cached], "the cached entry survives a bypass"
    assert cache.stats.bypasses == 2 and len(cache) == 1


def test_a_message_larger_than_max_bytes_bypasses_the_cache(kms, clock):
    cache = DataKeyCache(max_age_seconds=60, max_bytes=1000, clock=clock)
    big = _blobs(cache, kms, 2, size=1001)
    assert len(set(big)) == 2 and len(cache) == 0


def test_without_a_byte_limit_an_unknown_size_uses_the_cache(kms, clock):
    cache = DataKeyCache(max_age_seconds=60, clock=clock)
    assert len(set(_blobs(cache, kms, 5, size=None))) == 1


def test_entries_are_per_key_and_canonical_context(kms, clock):
    cache = DataKeyCache(max_age_seconds=60, clock=clock)
    ab = _blobs(cache, kms, 1, context={"a": "1", "b": "2"})[0]
    assert _blobs(cache, kms, 1, context={"b": "2", "a": "1"}) == [ab]
    other_context = _blobs(cache, kms, 1, context={"a": "1"})[0]
    other_key = _blobs(cache, kms, 1, key_id="key-2", context={"a": "1", "b": "2"})[0]
    assert len({ab, other_context, other_key}) == 3
    assert kms.calls[-1] == ("key-2", {"a": "1", "b": "2"}), "the context is sent to the KMS"


def test_the_least_recently_used_entry_is_evicted_beyond_capacity(kms, clock):
    cache = DataKeyCache(max_age_seconds=60, capacity=2, clock=clock)
    a, b = _blobs(cache, kms, 1, key_id="a")[0], _blobs(cache, kms, 1, key_id="b")[0]
    assert _blobs(cache, kms, 1, key_id="a") == [a]  # a is now the most recently used
    _blobs(cache, kms, 1, key_id="c")  # evicts b
    assert len(cache) == 2
    assert _blobs(cache, kms, 1, key_id="a") == [a]
    assert _blobs(cache, kms, 1, key_id="b") != [b]


def test_clear_forgets_every_key(kms, clock):
    cache = DataKeyCache(max_age_seconds=60, clock=clock)
    first = _blobs(cache, kms, 1)[0]
    cache.clear()
    assert len(cache) == 0 and _blobs(cache, kms, 1) != [first]


def test_threads_never_use_a_key_more_than_max_messages_times(kms):
    cache = DataKeyCache(max_age_seconds=60, max_messages=50)
    with ThreadPoolExecutor(8) as pool:
        runs = list(pool.map(lambda _: _blobs(cache, kms, 200), range(8)))
    used = [blob for run in runs for blob in run]
    assert len(used) == 1600
    assert max(Counter(used).values()) <= 50
    assert len(kms.calls) >= 32
    stats = cache.stats
    assert stats.hits + stats.misses == 1600 and stats.misses == len(kms.calls)


def test_no_plaintext_key_in_repr(kms, clock):
    cache = DataKeyCache(max_age_seconds=60, clock=clock)
    dek = cache.data_key(kms, "key")[0].plaintext
    text = repr(cache) + repr(cache._entries) + repr(cache.stats)
    for form in (repr(dek), dek.hex(), str(list(dek))):
        assert form not in text
    assert "entries=1" in repr(cache)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_age_seconds": 0}, {"max_age_seconds": -1}, {"max_age_seconds": 1, "max_messages": 0},
     {"max_age_seconds": 1, "max_bytes": -1}, {"max_age_seconds": 1, "capacity": 0}],
)
def test_limits_are_validated(kwargs):
    with pytest.raises(ValueError):
        DataKeyCache(**kwargs)


# -- with encrypt_stream --------------------------------------------------------------------------


def test_encrypt_stream_counts_the_sources_size_against_max_bytes(kms, clock):
    cache = DataKeyCache(max_age_seconds=60, max_bytes=3 * MIN_CHUNK_SIZE, clock=clock)
    infos = [
        encrypt_stream(kms, "key", io.BytesIO(bytes(MIN_CHUNK_SIZE)), io.BytesIO(), cache=cache) for _ in range(4)
    ]
    assert [i.data_key_cached for i in infos] == [False, True, True, False]
    assert len(kms.calls) == 2


def test_a_source_that_grows_while_it_is_read_is_counted_in_full(kms, clock):
    class Growing(io.BytesIO):
        """Reports a size of 10 bytes but holds more (a log file being appended to)."""

        def seek(self, pos, whence=0):
            return 10 if whence == os.SEEK_END else super().seek(pos, whence)

    cache = DataKeyCache(max_age_seconds=60, max_bytes=100, clock=clock)
    info = encrypt_stream(kms, "key", Growing(bytes(95)), io.BytesIO(), cache=cache)
    assert info.plaintext_bytes == 95
    # 95 bytes are on the key now, not 10: a 10-byte message does not fit any more.
    assert encrypt_stream(kms, "key", io.BytesIO(bytes(10)), io.BytesIO(), cache=cache).data_key_cached is False


def test_envelopes_under_a_cached_key_decrypt(kms, clock):
    cache = DataKeyCache(max_age_seconds=60, clock=clock)
    outs = []
    for text in (b"one", b"two"):
        out = io.BytesIO()
        encrypt_stream(kms, "key", io.BytesIO(text), out, cache=cache)
        outs.append(out.getvalue())
    back = [io.BytesIO() for _ in outs]
    for envelope, sink in zip(outs, back):
        decrypt_stream(kms, io.BytesIO(envelope), sink)
    assert [b.getvalue() for b in back] == [b"one", b"two"] and len(kms.calls) == 1
