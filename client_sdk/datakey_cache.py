"""`DataKeyCache`: reuse data keys across envelopes within limits, as the AWS Encryption SDK's
caching materials manager does, to spare the KMS a GenerateDataKey call per message.

    cache = DataKeyCache(max_age_seconds=300, max_messages=100, max_bytes=1 << 30)
    for path in paths:
        encrypt_stream(kms, "alias/logs", path, f"{path}.krev", cache=cache)

An entry is keyed by (key id or alias as given, canonical encryption context). A cached data key
is used for a new message only while all three limits hold:

- it is younger than `max_age_seconds` (measured from when the KMS made it);
- it has been used for fewer than `max_messages` messages;
- the bytes it has encrypted plus this message's size are at most `max_bytes`.

Otherwise a new data key is fetched and replaces the entry. When the message's size is not known
(a pipe, a socket) and `max_bytes` is set, the cache is bypassed: a fresh key is used and not
cached, because the byte limit could not be kept. A message larger than `max_bytes` is bypassed
the same way. With `max_bytes=None` there is no byte limit and sizes do not matter.

Reusing a data key is safe for the envelope format because every message derives its own key from
it (HKDF with the message's random id); the limits bound how much one leaked DEK would expose and
how long a disabled or rotated master key keeps being used. The cache is thread-safe. It holds
plaintext data keys in memory until they are replaced, evicted (least recently used, beyond
`capacity`) or `clear()`ed; Python cannot wipe them, so keep a process that caches keys as trusted
as the keys. Share a cache only among clients acting as the same tenant and credential: an alias
names different keys in different tenants.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping

from client_sdk.envelope import DEK_BYTES, encode_context
from client_sdk.types import DataKey

if TYPE_CHECKING:
    from client_sdk.kms_client import KmsClient

#: The AWS Encryption SDK's default message limit.
DEFAULT_MAX_MESSAGES = 2**32


@dataclass(frozen=True)
class DataKeyCacheStats:
    """Counters of a `DataKeyCache` since it was made.

    `hits`: messages that reused a cached key; `misses`: keys fetched and cached; `bypasses`: keys
    fetched and not cached (size unknown, or over `max_bytes`); `entries`: keys held now.
    """

    hits: int
    misses: int
    bypasses: int
    entries: int


class _Entry:
    __slots__ = ("data_key", "created", "messages", "bytes")

    def __init__(self, data_key: DataKey, created: float, size: int) -> None:
        self.data_key = data_key
        self.created = created
        self.messages = 1
        self.bytes = size

    def __repr__(self) -> str:  # never the plaintext key
        return f"<entry key_id={self.data_key.key_id!r} messages={self.messages} bytes={self.bytes}>"


class DataKeyCache:
    """A bounded, thread-safe cache of data keys for envelope encryption.

    Args:
        max_age_seconds: a key is not used for new messages once this old (must be > 0).
        max_messages: a key is used for at most this many messages (>= 1).
        max_bytes: a key encrypts at most this many bytes in all (>= 0), or None for no limit.
        capacity: how many (key, context) entries to hold; the least recently used goes first.
        clock: monotonic seconds (tests pass a settable clock).
    """

    def __init__(
        self,
        max_age_seconds: float,
        max_messages: int = DEFAULT_MAX_MESSAGES,
        max_bytes: int | None = None,
        *,
        capacity: int = 100,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not max_age_seconds > 0:
            raise ValueError(f"max_age_seconds must be positive, not {max_age_seconds}")
        if max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, not {max_messages}")
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"max_bytes must be 0 or more (or None for no limit), not {max_bytes}")
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self.max_age_seconds = max_age_seconds
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.capacity = capacity
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, bytes], _Entry] = OrderedDict()
        self._hits = self._misses = self._bypasses = 0

    def data_key(
        self,
        kms: KmsClient,
        key_id: str,
        *,
        context: Mapping[str, str] | None = None,
        message_size: int | None = None,
        timeout: float | None = None,
    ) -> tuple[DataKey, bool]:
        """A data key for one message of `message_size` bytes (None: unknown) under `key_id`
        and `context`: a cached one within the limits, else a fresh one from
        `kms.generate_data_key`. Returns (the data key, whether it came from the cache); the
        message is counted against the key either way."""
        pairs = dict(context or {})
        slot = (key_id, encode_context(pairs))
        bypass = self.max_bytes is not None and (message_size is None or message_size > self.max_bytes)
        with self._lock:
            if not bypass:
                entry = self._entries.get(slot)
                if entry is not None and self._usable(entry, message_size or 0):
                    entry.messages += 1
                    entry.bytes += message_size or 0
                    self._entries.move_to_end(slot)
                    self._hits += 1
                    return entry.data_key, True
                # Expired or used up: no later message may pick it while the new key is fetched.
                self._entries.pop(slot, None)
        # The KMS call runs outside the lock; two threads missing at once both fetch (harmless).
        fresh = kms.generate_data_key(key_id, number_of_bytes=DEK_BYTES, context=pairs, timeout=timeout)
        with self._lock:
            if bypass:
                self._bypasses += 1
            else:
                self._misses += 1
                self._entries[slot] = _Entry(fresh, self._clock(), message_size or 0)
                self._entries.move_to_end(slot)
                while len(self._entries) > self.capacity:
                    self._entries.popitem(last=False)
        return fresh, False

    def _usable(self, entry: _Entry, size: int) -> bool:
        return (
            self._clock() - entry.created < self.max_age_seconds
            and entry.messages < self.max_messages
            and (self.max_bytes is None or entry.bytes + size <= self.max_bytes)
        )

    def _add_bytes(self, key_id: str, encoded_context: bytes, ciphertext_blob: bytes, extra: int) -> None:
        """Count `extra` more bytes against the entry, if it still holds that data key (a source
        that grew while it was encrypted)."""
        with self._lock:
            entry = self._entries.get((key_id, encoded_context))
            if entry is not None and entry.data_key.ciphertext_blob == ciphertext_blob:
                entry.bytes += extra

    def clear(self) -> None:
        """Drop every cached data key (the next message of each key fetches a new one)."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def stats(self) -> DataKeyCacheStats:
        """Hit, miss and bypass counts and the number of entries held."""
        with self._lock:
            return DataKeyCacheStats(self._hits, self._misses, self._bypasses, len(self._entries))

    def __repr__(self) -> str:
        return (
            f"DataKeyCache(max_age_seconds={self.max_age_seconds}, max_messages={self.max_messages}, "
            f"max_bytes={self.max_bytes}, capacity={self.capacity}, entries={len(self)})"
        )
