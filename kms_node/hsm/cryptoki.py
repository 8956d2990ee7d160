"""The few PKCS#11 calls python-pkcs11 does not make for us, through ctypes.

- python-pkcs11 0.10 initialises the library with ``C_Initialize(NULL)``. SoftHSM then runs
  without mutexes, and two threads calling it at once corrupt its heap. `load_library`
  re-initialises the module with ``CKF_OS_LOCKING_OK`` right after python-pkcs11 loads it and
  before any session exists.
- ``C_InitToken`` (used by ``keyrelay hsm init``) and ``C_CloseAllSessions``.

Both python-pkcs11 and ctypes ``dlopen`` the same path, so they share one instance of the module.
"""

from __future__ import annotations

import ctypes
import threading

import pkcs11

CK_ULONG = ctypes.c_ulong
CKR_OK = 0
CKF_OS_LOCKING_OK = 0x2

# The head of CK_FUNCTION_LIST, in the order PKCS#11 2.40 defines it.
_FUNCTION_NAMES = (
    "C_Initialize", "C_Finalize", "C_GetInfo", "C_GetFunctionList", "C_GetSlotList",
    "C_GetSlotInfo", "C_GetTokenInfo", "C_GetMechanismList", "C_GetMechanismInfo",
    "C_InitToken", "C_InitPIN", "C_SetPIN", "C_OpenSession", "C_CloseSession",
    "C_CloseAllSessions",
)


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte)]


class _FunctionList(ctypes.Structure):
    _fields_ = [("version", _Version)] + [(name, ctypes.c_void_p) for name in _FUNCTION_NAMES]


class _InitializeArgs(ctypes.Structure):
    _fields_ = [
        ("CreateMutex", ctypes.c_void_p),
        ("DestroyMutex", ctypes.c_void_p),
        ("LockMutex", ctypes.c_void_p),
        ("UnlockMutex", ctypes.c_void_p),
        ("flags", CK_ULONG),
        ("pReserved", ctypes.c_void_p),
    ]


class CryptokiError(RuntimeError):
    """A raw PKCS#11 call failed; `rv` is the CKR_* value."""

    def __init__(self, call: str, rv: int) -> None:
        super().__init__(f"{call} failed with CKR 0x{rv:08X}")
        self.rv = rv


class _Module:
    def __init__(self, path: str) -> None:
        self._dll = ctypes.CDLL(path)
        functions = ctypes.POINTER(_FunctionList)()
        rv = self._dll.C_GetFunctionList(ctypes.byref(functions))
        if rv != CKR_OK:
            raise CryptokiError("C_GetFunctionList", rv)
        self._functions = functions.contents

    def call(self, name: str, argtypes: tuple, *args) -> None:
        fn = ctypes.CFUNCTYPE(CK_ULONG, *argtypes)(getattr(self._functions, name))
        rv = fn(*args)
        if rv != CKR_OK:
            raise CryptokiError(name, rv)


_lock = threading.Lock()
_loaded: dict[str, tuple[object, _Module]] = {}


def load_library(path: str):
    """Load a PKCS#11 module once per process, initialised for multi-threaded use.

    Returns the python-pkcs11 ``lib`` object.
    """
    with _lock:
        if path in _loaded:
            return _loaded[path][0]
        lib = pkcs11.lib(path)
        module = _Module(path)
        # Nothing has opened a session yet, so finalising and re-initialising is safe.
        module.call("C_Finalize", (ctypes.c_void_p,), None)
        args = _InitializeArgs(flags=CKF_OS_LOCKING_OK)
        module.call("C_Initialize", (ctypes.c_void_p,), ctypes.byref(args))
        _loaded[path] = (lib, module)
        return lib


def _module(path: str) -> _Module:
    load_library(path)
    return _loaded[path][1]


def init_token(path: str, slot_id: int, so_pin: str, label: str) -> None:
    """C_InitToken: initialise the token in `slot_id` with a label and an SO PIN."""
    padded = label.encode()[:32].ljust(32, b" ")
    pin = so_pin.encode()
    _module(path).call(
        "C_InitToken", (CK_ULONG, ctypes.c_char_p, CK_ULONG, ctypes.c_char_p), slot_id, pin, len(pin), padded
    )


def close_all_sessions(path: str, slot_id: int) -> None:
    """C_CloseAllSessions on one slot (logs the application out of that token)."""
    _module(path).call("C_CloseAllSessions", (CK_ULONG,), slot_id)
