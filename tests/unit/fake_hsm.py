"""A small in-memory stand-in for the PKCS#11 pool, for unit tests of the key service only.

Each "wrapped" CMK blob is a real `foundation.blob_formats.encode_wrapped_key` blob around random bytes; the
fake keeps the AES-256 key it stands for in a dict keyed by that blob. Encryption is real AES-GCM
(from `cryptography`), so tags, AAD and IVs behave exactly as they would in an HSM.
"""

from __future__ import annotations

import os
from typing import Callable, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from foundation import blob_formats as blobs
from kms_node.hsm.backend import HsmAuthenticationFailed, KeyVersionRef, SlotStatus

T = TypeVar("T")

#: CKM_AES_KEY_WRAP_KWP, the mechanism the real pool records in its wrapped blobs.
FAKE_WRAP_MECHANISM = 0x210A


class UnknownWrappedKey(Exception):
    """The fake was asked to use a wrapped blob it never generated (an HSM would fail to unwrap)."""


class FakeSession:
    """One 'session' of the fake HSM: the operations of `kms_node.hsm.backend.HsmSession`."""

    def __init__(self, hsm: "FakeHsm") -> None:
        self._hsm = hsm

    def _aes(self, key: KeyVersionRef) -> AESGCM:
        mechanism, _ = blobs.parse_wrapped_key(key.wrapped)
        if mechanism != FAKE_WRAP_MECHANISM:
            raise UnknownWrappedKey(f"unexpected wrap mechanism {mechanism:#x}")
        try:
            return AESGCM(self._hsm.keys[key.wrapped])
        except KeyError:
            raise UnknownWrappedKey(repr(key)) from None

    def encrypt(self, key: KeyVersionRef, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        assert len(iv) == blobs.IV_BYTES
        self._hsm.encrypt_calls += 1
        return self._aes(key).encrypt(iv, plaintext, aad)

    def decrypt(self, key: KeyVersionRef, iv: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        self._hsm.decrypt_calls += 1
        try:
            return self._aes(key).decrypt(iv, ciphertext, aad)
        except InvalidTag:
            raise HsmAuthenticationFailed() from None

    def random(self, length: int) -> bytes:
        return os.urandom(length)

    def generate_wrapped_key(self) -> bytes:
        wrapped = blobs.encode_wrapped_key(FAKE_WRAP_MECHANISM, os.urandom(40))
        self._hsm.keys[wrapped] = AESGCM.generate_key(bit_length=256)
        return wrapped


class FakeHsm:
    """An `HsmBackend` whose `run` calls the function inline with a single fake session."""

    def __init__(self) -> None:
        self.keys: dict[bytes, bytes] = {}
        self.session = FakeSession(self)
        self.run_calls = 0
        self.encrypt_calls = 0
        self.decrypt_calls = 0
        self.started = False
        self.closed = False

    async def start(self) -> None:
        self.started = True

    async def run(self, fn: Callable[[FakeSession], T]) -> T:
        self.run_calls += 1
        return fn(self.session)

    def status(self) -> list[SlotStatus]:
        return [SlotStatus("fake", True, "in-memory fake")]

    async def close(self) -> None:
        self.closed = True
