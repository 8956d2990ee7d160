"""The PKCS#11 HSM pool: N token slots sharing one domain key, sessions, failover.

Layout per slot (a token found by its label):

- a *keeper* session, logged in with the user PIN for the life of the slot. It holds the login
  (one per process and token) and owns the session objects: every CMK version used on the slot
  is unwrapped once by the domain key into a sensitive, non-extractable session object.
- `sessions_per_slot` worker sessions (opened without a PIN: the login is shared). Each caches
  the handles of the CMK versions it has used, so the request path is one C_EncryptInit +
  C_Encrypt (or Decrypt) under a cached handle and creates no objects.

Worker sessions of all healthy slots wait in one queue; a request takes whichever is free. A
PKCS#11 error that means the slot itself is broken (session closed, device removed, not logged
in, handle gone) takes the slot out of rotation, the request is retried on another slot, and a
background thread re-opens the slot every `retry_seconds`.

Blocking calls run on a bounded thread pool (as many threads as sessions), never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.mechanisms import GCMParams

from foundation.blob_formats import encode_wrapped_key, parse_wrapped_key
from foundation.config import Secret
from foundation.errors import HsmUnavailableError, InternalError
from foundation.metrics import operation_var
from kms_node.hsm.backend import HsmAuthenticationFailed, KeyVersionRef, SlotStatus
from kms_node.hsm.cryptoki import load_library

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The mechanism CMK versions are wrapped with (RFC 5649 in SoftHSM's numbering, 0x210A).
WRAP_MECHANISM = Mechanism.AES_KEY_WRAP_PAD
GCM_TAG_BITS = 128

# Errors that say the slot, not the request, is broken.
SLOT_FAILURES = (
    p11.SessionHandleInvalid,
    p11.SessionClosed,
    p11.DeviceRemoved,
    p11.DeviceError,
    p11.DeviceMemory,
    p11.TokenNotPresent,
    p11.TokenNotRecognised,
    p11.UserNotLoggedIn,
    p11.KeyHandleInvalid,
    p11.ObjectHandleInvalid,
    p11.WrappingKeyHandleInvalid,
    p11.UnwrappingKeyHandleInvalid,
    p11.NoSuchToken,
    p11.NoSuchKey,
    p11.SlotIDInvalid,
)
# Errors C_Decrypt gives for a bad GCM tag on some modules (SoftHSM says GeneralError); the
# session is probed to tell them from a broken slot.
_AMBIGUOUS_DECRYPT_FAILURES = (
    p11.GeneralError,
    p11.FunctionFailed,
    p11.EncryptedDataInvalid,
    p11.EncryptedDataLenRange,
    p11.DataInvalid,
)
# Login errors that retrying would only make worse (a real HSM locks the PIN).
_FATAL_LOGIN_ERRORS = (p11.PinIncorrect, p11.PinLocked, p11.PinExpired, p11.PinInvalid, p11.PinLenRange)

_CMK_TEMPLATE = {
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.ENCRYPT: True,
    Attribute.DECRYPT: True,
    Attribute.WRAP: False,
    Attribute.UNWRAP: False,
    Attribute.SIGN: False,
    Attribute.VERIFY: False,
    Attribute.DERIVE: False,
}


@dataclass(eq=False)
class _Slot:
    label: str
    generation: int = 0
    up: bool = False
    fatal: bool = False
    detail: str = "not opened yet"
    keeper: object | None = None
    domain_key: object | None = None
    loaded: set[tuple[str, int]] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    leases: list["_Lease"] = field(default_factory=list)


@dataclass(eq=False)
class _Lease:
    slot: _Slot
    generation: int
    session: object
    domain_key: object | None = None
    keys: dict[tuple[str, int], object] = field(default_factory=dict)


def _cmk_label(key_id: str, version: int) -> str:
    return f"kr-cmk/{key_id}/{version}"


def _close_quietly(session: object | None) -> None:
    if session is None:
        return
    try:
        session.close()
    except p11.PKCS11Error:
        pass


class _LeaseSession:
    """The `HsmSession` handed to service functions: operations on one leased session."""

    __slots__ = ("_pool", "_lease")

    def __init__(self, pool: "Pkcs11Pool", lease: _Lease) -> None:
        self._pool = pool
        self._lease = lease

    def _key(self, ref: KeyVersionRef):
        lease = self._lease
        key = lease.keys.get((ref.key_id, ref.version))
        if key is None:
            self._pool._ensure_loaded(lease.slot, ref)
            key = lease.session.get_key(
                object_class=ObjectClass.SECRET_KEY, label=_cmk_label(ref.key_id, ref.version)
            )
            lease.keys[(ref.key_id, ref.version)] = key
        return key

    def encrypt(self, key: KeyVersionRef, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return self._key(key).encrypt(
            plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(iv, aad, GCM_TAG_BITS)
        )

    def decrypt(self, key: KeyVersionRef, iv: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        handle = self._key(key)
        try:
            return handle.decrypt(
                ciphertext, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(iv, aad, GCM_TAG_BITS)
            )
        except _AMBIGUOUS_DECRYPT_FAILURES:
            # A healthy session answers a cheap call; then the tag was wrong, not the slot.
            self._lease.session.generate_random(64)
            raise HsmAuthenticationFailed() from None

    def random(self, length: int) -> bytes:
        return self._lease.session.generate_random(length * 8)

    def generate_wrapped_key(self) -> bytes:
        lease = self._lease
        if lease.domain_key is None:
            lease.domain_key = lease.session.get_key(
                object_class=ObjectClass.SECRET_KEY, label=self._pool.domain_key_label
            )
        # Sensitive (its value can never be read) and extractable only so that the domain key
        # can wrap it; it lives for the two calls below and is then destroyed.
        fresh = lease.session.generate_key(
            KeyType.AES,
            256,
            store=False,
            template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: True, Attribute.LABEL: "kr-cmk-new"},
        )
        try:
            wrapped = lease.domain_key.wrap_key(fresh, mechanism=WRAP_MECHANISM)
        finally:
            fresh.destroy()
        return encode_wrapped_key(int(WRAP_MECHANISM), wrapped)


class Pkcs11Pool:
    """An `HsmBackend` over a PKCS#11 module: several token slots, sessions, failover."""

    def __init__(
        self,
        module: str,
        token_labels: list[str] | tuple[str, ...],
        pin: Secret,
        *,
        domain_key_label: str,
        sessions_per_slot: int = 4,
        threads: int = 0,
        retry_seconds: float = 5.0,
        checkout_timeout: float = 5.0,
    ) -> None:
        if not token_labels:
            raise ValueError("an HSM pool needs at least one token")
        self.module = module
        self.domain_key_label = domain_key_label
        self._pin = pin
        self._sessions_per_slot = sessions_per_slot
        self._retry_seconds = retry_seconds
        self._checkout_timeout = checkout_timeout
        self._slots = [_Slot(label) for label in token_labels]
        self._free: queue.Queue[_Lease] = queue.Queue()
        self._state_lock = threading.Lock()
        workers = threads or len(self._slots) * sessions_per_slot
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hsm")
        self._stop = threading.Event()
        #: Called on the worker thread with (operation, seconds) after each HSM job, e.g. for metrics.
        self.observer: Callable[[str, float], None] | None = None
        self._retry_thread: threading.Thread | None = None
        self._lib = None

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the module, log in to every slot; raise HsmUnavailableError if none comes up."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._start_blocking)

    def _start_blocking(self) -> None:
        try:
            self._lib = load_library(self.module)
        except (OSError, p11.PKCS11Error) as exc:
            raise HsmUnavailableError(f"cannot load the PKCS#11 module {self.module}: {exc}") from None
        for slot in self._slots:
            self._open_slot(slot)
        if not any(slot.up for slot in self._slots):
            details = "; ".join(f"{s.label}: {s.detail}" for s in self._slots)
            raise HsmUnavailableError(f"no HSM slot of the pool could be opened ({details})")
        self._retry_thread = threading.Thread(target=self._retry_loop, name="hsm-slot-retry", daemon=True)
        self._retry_thread.start()

    async def close(self) -> None:
        """Close every session (logging out) and stop the worker threads."""
        self._stop.set()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._close_blocking)

    def _close_blocking(self) -> None:
        if self._retry_thread is not None:
            self._retry_thread.join(timeout=self._retry_seconds + 1)
        self._executor.shutdown(wait=True)
        for slot in self._slots:
            with self._state_lock:
                self._take_down(slot, "pool closed")

    def status(self) -> list[SlotStatus]:
        """The health of every slot, for logs and health checks."""
        return [SlotStatus(s.label, s.up, s.detail) for s in self._slots]

    # -- slots ------------------------------------------------------------------------------

    def _open_slot(self, slot: _Slot) -> None:
        keeper = None
        sessions: list[object] = []
        try:
            token = self._lib.get_token(token_label=slot.label)
            try:
                keeper = token.open(rw=True, user_pin=self._pin.reveal())
            except p11.UserAlreadyLoggedIn:
                # The login of an earlier, broken generation survived; it is shared.
                keeper = token.open(rw=True)
            domain_key = keeper.get_key(object_class=ObjectClass.SECRET_KEY, label=self.domain_key_label)
            sessions = [token.open() for _ in range(self._sessions_per_slot)]
        except p11.NoSuchToken:
            self._mark_failed(slot, f"no token labelled {slot.label!r} (run `keyrelay hsm init`)", keeper, sessions)
            return
        except p11.NoSuchKey:
            self._mark_failed(
                slot,
                f"token {slot.label!r} has no domain key {self.domain_key_label!r} (run `keyrelay hsm init`)",
                keeper,
                sessions,
            )
            return
        except _FATAL_LOGIN_ERRORS as exc:
            self._mark_failed(slot, f"login refused ({type(exc).__name__}): check the PIN", keeper, sessions)
            slot.fatal = True
            return
        except p11.PKCS11Error as exc:
            self._mark_failed(slot, f"cannot open: {type(exc).__name__}", keeper, sessions)
            return
        with self._state_lock:
            slot.generation += 1
            slot.keeper = keeper
            slot.domain_key = domain_key
            slot.loaded = set()
            slot.leases = [_Lease(slot, slot.generation, s) for s in sessions]
            slot.up = True
            slot.detail = "ok"
            for lease in slot.leases:
                self._free.put(lease)
        log.info("HSM slot %s is up with %d sessions", slot.label, len(sessions))

    @staticmethod
    def _mark_failed(slot: _Slot, detail: str, keeper: object | None, sessions: list[object]) -> None:
        for session in sessions:
            _close_quietly(session)
        _close_quietly(keeper)
        slot.up = False
        slot.detail = detail
        log.warning("HSM slot %s is out of rotation: %s", slot.label, detail)

    def _take_down(self, slot: _Slot, detail: str) -> None:
        """Take a slot out of rotation (caller holds the state lock)."""
        if not slot.up and slot.keeper is None:
            return
        slot.up = False
        slot.detail = detail
        slot.generation += 1
        for lease in slot.leases:
            _close_quietly(lease.session)
        slot.leases = []
        _close_quietly(slot.keeper)
        slot.keeper = None
        slot.domain_key = None

    def _slot_failed(self, slot: _Slot, generation: int, exc: Exception) -> None:
        with self._state_lock:
            if slot.generation != generation:
                return  # another thread already took this generation down
            self._take_down(slot, f"failed with {type(exc).__name__}; retrying every {self._retry_seconds:g}s")
        log.warning("HSM slot %s failed (%s); its work moves to the other slots", slot.label, type(exc).__name__)

    def _retry_loop(self) -> None:
        while not self._stop.wait(self._retry_seconds):
            for slot in self._slots:
                if not slot.up and not slot.fatal and not self._stop.is_set():
                    self._open_slot(slot)

    def _ensure_loaded(self, slot: _Slot, ref: KeyVersionRef) -> None:
        """Unwrap a CMK version into the slot as a session object, once per slot generation."""
        with slot.lock:
            if (ref.key_id, ref.version) in slot.loaded:
                return
            mechanism, wrapped = parse_wrapped_key(ref.wrapped)
            try:
                slot.domain_key.unwrap_key(
                    ObjectClass.SECRET_KEY,
                    KeyType.AES,
                    wrapped,
                    mechanism=Mechanism(mechanism),
                    label=_cmk_label(ref.key_id, ref.version),
                    store=False,
                    template=_CMK_TEMPLATE,
                )
            except (p11.WrappedKeyInvalid, p11.WrappedKeyLenRange, p11.EncryptedDataInvalid, ValueError):
                raise InternalError(
                    f"version {ref.version} of key {ref.key_id} cannot be unwrapped in slot {slot.label}: "
                    "the slot's domain key differs from the pool's, or the key store is damaged"
                ) from None
            slot.loaded.add((ref.key_id, ref.version))

    # -- running work -----------------------------------------------------------------------

    def _checkout(self) -> _Lease:
        deadline = time.monotonic() + self._checkout_timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                lease = self._free.get(timeout=max(remaining, 0.001))
            except queue.Empty:
                raise HsmUnavailableError(
                    f"no HSM session became free within {self._checkout_timeout:g}s{self._down_slots()}"
                ) from None
            if lease.generation == lease.slot.generation and lease.slot.up:
                return lease
            # A lease of a slot generation that has been taken down: its session is closed.

    def _checkin(self, lease: _Lease) -> None:
        if lease.generation == lease.slot.generation and lease.slot.up:
            self._free.put(lease)

    def _run_blocking(self, fn: Callable[[_LeaseSession], T], operation: str = "other") -> T:
        attempts = len(self._slots) + 1
        for _ in range(attempts):
            lease = self._checkout()
            try:
                started = time.perf_counter()
                result = fn(_LeaseSession(self, lease))
                if self.observer is not None:
                    self.observer(operation, time.perf_counter() - started)
            except SLOT_FAILURES as exc:
                self._slot_failed(lease.slot, lease.generation, exc)
                continue
            except BaseException:
                self._checkin(lease)
                raise
            self._checkin(lease)
            return result
        raise HsmUnavailableError(f"every HSM slot of the pool failed while serving this request{self._down_slots()}")

    def _down_slots(self) -> str:
        down = "; ".join(f"{s.label}: {s.detail}" for s in self._slots if not s.up)
        return f" (slots out of rotation: {down})" if down else ""

    async def run(self, fn: Callable[[_LeaseSession], T]) -> T:
        """Run `fn(session)` on an HSM worker thread; see the module docstring for failover."""
        if self._stop.is_set():
            raise HsmUnavailableError("the HSM pool is shutting down")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run_blocking, fn, operation_var.get())

    # -- test and operator hooks --------------------------------------------------------------

    def slot_ids(self) -> dict[str, int]:
        """PKCS#11 slot id of each token label that is present."""
        result = {}
        for label in (s.label for s in self._slots):
            try:
                result[label] = self._lib.get_token(token_label=label).slot.slot_id
            except p11.PKCS11Error:
                continue
        return result


__all__ = ["Pkcs11Pool", "WRAP_MECHANISM"]
