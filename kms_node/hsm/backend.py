"""What the node's key service needs from an HSM, independent of PKCS#11.

The service composes its work as a function of one `HsmSession` and hands it to
`HsmBackend.run`, which runs it on a worker thread with a session of a healthy slot (and again
on another slot if that slot fails mid-way, so the function must be free of side effects outside
the HSM).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class KeyVersionRef:
    """One CMK version as the HSM layer needs it: its identity and its domain-wrapped blob."""

    key_id: str
    version: int
    wrapped: bytes

    def __repr__(self) -> str:
        return f"KeyVersionRef({self.key_id!r}, v{self.version})"


@dataclass(frozen=True, slots=True)
class SlotStatus:
    """Health of one slot of a pool."""

    label: str
    up: bool
    detail: str


class HsmAuthenticationFailed(Exception):
    """AES-GCM decryption failed its tag check: altered data or the wrong AAD."""


class HsmSession(Protocol):
    """Operations on one checked-out session; every key stays inside the HSM."""

    def encrypt(self, key: KeyVersionRef, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """AES-256-GCM encrypt under a CMK version; returns ciphertext || tag."""

    def decrypt(self, key: KeyVersionRef, iv: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        """AES-256-GCM decrypt; raises HsmAuthenticationFailed when the tag does not verify."""

    def random(self, length: int) -> bytes:
        """`length` bytes from the HSM's random number generator."""

    def generate_wrapped_key(self) -> bytes:
        """Generate a new AES-256 CMK in the HSM and return it wrapped by the domain key."""


class HsmBackend(Protocol):
    """A pool of HSM slots sharing one domain key."""

    async def start(self) -> None:
        """Open and log in to the slots; raise if none can serve."""

    async def run(self, fn: Callable[[HsmSession], T]) -> T:
        """Run `fn` with a session on a worker thread; retried on another slot if a slot fails."""

    def status(self) -> list[SlotStatus]:
        """The health of every slot."""

    async def close(self) -> None:
        """Close every session and stop the worker threads."""
