"""The device file: a messaging user's private keys and relay device token, encrypted at rest.

The keys of `Messenger` are made on the device and never leave it. They live in one file per user
and device, encrypted under a key derived from the user's passphrase:

    {
      "format": "keyrelay.device-keys",
      "version": 1,
      "user_id": "alice",
      "kdf": {"name": "scrypt", "n": 131072, "r": 8, "p": 1, "salt": "<base64, 16 bytes>"},
      "aead": {"name": "AES-256-GCM", "nonce": "<base64, 12 bytes>"},
      "ciphertext": "<base64>"
    }

- scrypt (RFC 7914) turns the passphrase into a 32-byte master secret; HKDF-SHA256 derives from it
  one AES-256-GCM key per file kind (the device file, and beside it the messenger's state: the
  messages it has taken, `NAME.seen`, and the peers' key versions it has seen, `NAME.peers`), so
  the same nonce space never serves two purposes. The default cost, n = 2**17,
  r = 8, p = 1 (128 MiB, about 0.3 s on a 2-core machine), is OWASP's scrypt minimum.
- The AAD binds the format name, its version and the user id: a file renamed to another user, or
  edited to claim another format version, does not decrypt.
- Inside: the relay device token (a secret, so it is here and not in a profile), the KMS key that
  seals the user's public bundles, the newest bundle version published to the directory, and
  every key pair by bundle version. Old key pairs are kept: messages in flight to an old bundle
  version still decrypt after a re-registration.
- Written to a temporary file (mode 0600, fsync'd) and renamed over the old one, under an
  advisory lock (`.NAME.lock` beside the file), re-reading the file first: two processes of the
  same device never lose each other's new key pairs.

The state files beside the device file are `{"format", "version", "nonce", "ciphertext"}` documents
under the same scheme (the AAD binds their format, version and user id); what they hold is the
messenger's (`client_sdk.messenger_policy`), versioned by it. An absent or unreadable one reads as
None.

A wrong passphrase, or an altered file, raises `CiphertextAuthenticationError`; a file that is not
a device file raises `MalformedCiphertextError`. Neither message holds key material or the
passphrase, and neither does any `repr` here.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import functools
import json
import os
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hpke, serialization
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from foundation.errors import (
    AlreadyExistsError,
    CiphertextAuthenticationError,
    InvalidArgumentError,
    MalformedCiphertextError,
    NotFoundError,
    RevisionConflictError,
)
from foundation.messaging_ids import check_user_id
from keyrelay.v1 import messaging_pb2

#: The device file's `format` value and the version of its layout.
FORMAT = "keyrelay.device-keys"
FORMAT_VERSION = 1
_SEEN_FORMAT = "keyrelay.device-seen"
_PEERS_FORMAT = "keyrelay.device-peers"

#: scrypt cost of new device files (n: CPU/memory cost, a power of two; r: block size; p: lanes).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**17, 8, 1
# What a file may ask for: enough for any sane setting, too little to make opening a crafted file
# exhaust the machine.
_SCRYPT_N_RANGE = (2**14, 2**20)
_SCRYPT_R_RANGE = (1, 32)
_SCRYPT_P_RANGE = (1, 16)
_SCRYPT_MAX_MEMORY = 1 << 30
_SALT_BYTES, _NONCE_BYTES, _KEY_BYTES = 16, 12, 32


# -- KEMs -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KemSpec:
    """One HPKE KEM a bundle may name: how its keys are made, stored and read.

    Every KEM runs in the same suite (RFC 9180 base mode with HKDF-SHA256 and AES-256-GCM; with
    the hybrid KEM that is the COSE/JOSE suite `HPKE-Base-X25519MLKEM768-SHA256-AES256GCM`).
    """

    name: str
    algorithm: int  # messaging_pb2.KemAlgorithm
    suite: hpke.Suite
    private_key_size: int
    public_key_size: int
    generate: Callable[[], bytes] = field(repr=False)
    private_key: Callable[[bytes], Any] = field(repr=False)
    public_bytes: Callable[[bytes], bytes] = field(repr=False)
    public_key: Callable[[bytes], Any] = field(repr=False)


def _raw_public(key) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _raw_private(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def _suite(kem: hpke.KEM) -> hpke.Suite:
    return hpke.Suite(kem, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


# X25519: the 32-byte scalar; the public key is the 32-byte u-coordinate.
_X25519 = KemSpec(
    name="x25519",
    algorithm=messaging_pb2.KEM_ALGORITHM_X25519,
    suite=_suite(hpke.KEM.X25519),
    private_key_size=32,
    public_key_size=32,
    generate=lambda: _raw_private(x25519.X25519PrivateKey.generate()),
    private_key=x25519.X25519PrivateKey.from_private_bytes,
    public_bytes=lambda raw: _raw_public(x25519.X25519PrivateKey.from_private_bytes(raw).public_key()),
    public_key=x25519.X25519PublicKey.from_public_bytes,
)

# ML-KEM-768 + X25519 (HPKE KEM 0x647A): stored as the 64-byte ML-KEM seed (d || z) followed by the
# 32-byte X25519 scalar; the public key is the ML-KEM-768 encapsulation key (1184 bytes) followed
# by the X25519 public key (32 bytes), the KEM's serialized form.
_MLKEM_SEED, _MLKEM_PUBLIC = 64, 1184


def _hybrid_generate() -> bytes:
    return mlkem.MLKEM768PrivateKey.generate().private_bytes_raw() + _raw_private(x25519.X25519PrivateKey.generate())


def _hybrid_private(raw: bytes) -> hpke.MLKEM768X25519PrivateKey:
    return hpke.MLKEM768X25519PrivateKey(
        mlkem.MLKEM768PrivateKey.from_seed_bytes(raw[:_MLKEM_SEED]),
        x25519.X25519PrivateKey.from_private_bytes(raw[_MLKEM_SEED:]),
    )


def _hybrid_public_bytes(raw: bytes) -> bytes:
    ml = mlkem.MLKEM768PrivateKey.from_seed_bytes(raw[:_MLKEM_SEED]).public_key().public_bytes_raw()
    return ml + _raw_public(x25519.X25519PrivateKey.from_private_bytes(raw[_MLKEM_SEED:]).public_key())


def _hybrid_public(raw: bytes) -> hpke.MLKEM768X25519PublicKey:
    if len(raw) != _MLKEM_PUBLIC + 32:
        raise ValueError(f"an MLKEM768-X25519 public key is {_MLKEM_PUBLIC + 32} bytes")
    return hpke.MLKEM768X25519PublicKey(
        mlkem.MLKEM768PublicKey.from_public_bytes(raw[:_MLKEM_PUBLIC]),
        x25519.X25519PublicKey.from_public_bytes(raw[_MLKEM_PUBLIC:]),
    )


_MLKEM768_X25519 = KemSpec(
    name="mlkem768-x25519",
    algorithm=messaging_pb2.KEM_ALGORITHM_MLKEM768_X25519,
    suite=_suite(hpke.KEM.MLKEM768_X25519),
    private_key_size=_MLKEM_SEED + 32,
    public_key_size=_MLKEM_PUBLIC + 32,
    generate=_hybrid_generate,
    private_key=_hybrid_private,
    public_bytes=_hybrid_public_bytes,
    public_key=_hybrid_public,
)

#: The KEMs by name (the `kem=` argument of `Messenger.register`); the first is the default.
KEMS: dict[str, KemSpec] = {spec.name: spec for spec in (_MLKEM768_X25519, _X25519)}
DEFAULT_KEM = _MLKEM768_X25519.name
#: The KEMs by their `KemAlgorithm` value in bundles and envelopes.
KEMS_BY_ALGORITHM: dict[int, KemSpec] = {spec.algorithm: spec for spec in KEMS.values()}


def kem_spec(name: str) -> KemSpec:
    """The KEM called `name`; InvalidArgumentError naming the choices otherwise."""
    spec = KEMS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise InvalidArgumentError(f"unknown KEM {name!r}: choose one of {', '.join(KEMS)}")
    return spec


# -- key pairs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceKeyPair:
    """The private keys of one bundle version: the HPKE KEM key and the Ed25519 signing key.

    Only the public halves and the version show in `repr`.
    """

    bundle_version: int
    kem: KemSpec = field(repr=False)
    kem_private_bytes: bytes = field(repr=False)
    signing_private_bytes: bytes = field(repr=False)
    create_time: datetime

    @classmethod
    def generate(cls, bundle_version: int, kem: str = DEFAULT_KEM, *, now: datetime | None = None) -> "DeviceKeyPair":
        """Fresh key pairs for `bundle_version`."""
        spec = kem_spec(kem)
        return cls(
            bundle_version=bundle_version,
            kem=spec,
            kem_private_bytes=spec.generate(),
            signing_private_bytes=_raw_private(Ed25519PrivateKey.generate()),
            create_time=(now or datetime.now(timezone.utc)).replace(microsecond=0),
        )

    def __repr__(self) -> str:
        return f"DeviceKeyPair(bundle_version={self.bundle_version}, kem={self.kem.name!r})"

    @property
    def kem_name(self) -> str:
        return self.kem.name

    @functools.cached_property
    def kem_private_key(self):
        """The HPKE recipient private key (for `Suite.decrypt`)."""
        return self.kem.private_key(self.kem_private_bytes)

    def kem_public_bytes(self) -> bytes:
        """The serialized HPKE public key, as a bundle carries it."""
        return self.kem.public_bytes(self.kem_private_bytes)

    @functools.cached_property
    def signing_key(self) -> Ed25519PrivateKey:
        """The Ed25519 key that signs this user's envelopes."""
        return Ed25519PrivateKey.from_private_bytes(self.signing_private_bytes)

    def signing_public_bytes(self) -> bytes:
        return _raw_public(self.signing_key.public_key())

    def public_bundle(self, user_id: str) -> messaging_pb2.PublicKeyBundle:
        """The PublicKeyBundle of this version, to seal and publish."""
        bundle = messaging_pb2.PublicKeyBundle(
            user_id=user_id,
            bundle_version=self.bundle_version,
            kem=self.kem.algorithm,
            kem_public_key=self.kem_public_bytes(),
            signing_public_key=self.signing_public_bytes(),
        )
        bundle.create_time.FromDatetime(self.create_time)
        return bundle

    def _to_json(self) -> dict[str, Any]:
        return {
            "bundle_version": self.bundle_version,
            "kem": self.kem.name,
            "kem_private_key": _b64(self.kem_private_bytes),
            "signing_private_key": _b64(self.signing_private_bytes),
            "create_time": self.create_time.isoformat(),
        }

    @classmethod
    def _from_json(cls, data: Any) -> "DeviceKeyPair":
        version = data["bundle_version"]
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError("bad bundle version")
        spec = KEMS[data["kem"]]
        kem_private = _unb64(data["kem_private_key"])
        signing_private = _unb64(data["signing_private_key"])
        if len(kem_private) != spec.private_key_size or len(signing_private) != 32:
            raise ValueError("bad key length")
        create_time = datetime.fromisoformat(data["create_time"])
        return cls(version, spec, kem_private, signing_private, create_time)


# -- the file -------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ValueError("not base64 text")
    return base64.b64decode(text.encode("ascii"), validate=True)


def _aad(kind: str, user_id: str, version: int = FORMAT_VERSION) -> bytes:
    return f"{kind}\0{version}\0{user_id}".encode()


def _subkey(master: bytes, kind: str) -> bytes:
    return HKDF(hashes.SHA256(), _KEY_BYTES, salt=None, info=kind.encode()).derive(master)


@dataclass(frozen=True)
class _KdfParams:
    n: int
    r: int
    p: int
    salt: bytes

    def check(self) -> None:
        def within(value: Any, bounds: tuple[int, int]) -> bool:
            return not isinstance(value, bool) and isinstance(value, int) and bounds[0] <= value <= bounds[1]

        if not (
            within(self.n, _SCRYPT_N_RANGE)
            and self.n & (self.n - 1) == 0
            and within(self.r, _SCRYPT_R_RANGE)
            and within(self.p, _SCRYPT_P_RANGE)
            and 128 * self.r * self.n <= _SCRYPT_MAX_MEMORY
            and len(self.salt) >= _SALT_BYTES
        ):
            raise ValueError("scrypt parameters out of range")

    def derive(self, passphrase: bytes) -> bytes:
        return Scrypt(salt=self.salt, length=_KEY_BYTES, n=self.n, r=self.r, p=self.p).derive(passphrase)

    def to_json(self) -> dict[str, Any]:
        return {"name": "scrypt", "n": self.n, "r": self.r, "p": self.p, "salt": _b64(self.salt)}

    @classmethod
    def from_json(cls, data: Any) -> "_KdfParams":
        if data.get("name") != "scrypt":
            raise ValueError("unknown kdf")
        params = cls(data["n"], data["r"], data["p"], _unb64(data["salt"]))
        params.check()
        return params


def _new_kdf(scrypt_n: int) -> _KdfParams:
    """scrypt parameters with a fresh salt; InvalidArgumentError for a cost out of range."""
    kdf = _KdfParams(scrypt_n, SCRYPT_R, SCRYPT_P, secrets.token_bytes(_SALT_BYTES))
    try:
        kdf.check()
    except ValueError:
        raise InvalidArgumentError(
            f"scrypt_n must be a power of two from {_SCRYPT_N_RANGE[0]} to {_SCRYPT_N_RANGE[1]}"
        ) from None
    return kdf


def check_passphrase(passphrase: str | bytes) -> bytes:
    """The passphrase as bytes (UTF-8 for a str); InvalidArgumentError when empty, TypeError if neither."""
    if isinstance(passphrase, str):
        passphrase = passphrase.encode("utf-8")
    if not isinstance(passphrase, (bytes, bytearray)):
        raise TypeError(f"the passphrase must be str or bytes, not {type(passphrase).__name__}")
    if not passphrase:
        raise InvalidArgumentError("the passphrase is empty: choose one to encrypt the device file with")
    return bytes(passphrase)


def _write_private(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically: a 0600 temporary file, fsync'd, renamed over it."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _exists(path: Path) -> AlreadyExistsError:
    return AlreadyExistsError(f"a device file exists at {path}: open it with its passphrase, or choose another path")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock shared by every process writing the device file at `path`."""
    lock = path.with_name(f".{path.name}.lock")
    descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


@dataclass(frozen=True)
class TokenLife:
    """When this device got its relay token (Unix seconds; None: before devices kept it) and when
    the token expires (None: never, or not known)."""

    issue_time: float | None = None
    expire_time: float | None = None

    def renewal_due(self, now: float) -> bool:
        """Whether to rotate the token now: half its lifetime is gone, or its life is not known."""
        if self.issue_time is None:
            return True
        if self.expire_time is None:
            return False
        return now >= self.issue_time + (self.expire_time - self.issue_time) / 2


class DeviceKeys:
    """A loaded device file: user id, relay device token, KMS sealing key and key pairs.

    Create one with `DeviceKeys.create` (at registration) or read one with `DeviceKeys.load`.
    The object keeps the key derived from the passphrase (not the passphrase), so later writes
    need no passphrase and no scrypt run. Changes go to disk before the methods return.
    """

    def __init__(
        self,
        path: Path,
        user_id: str,
        device_token: str,
        kms_key_id: str,
        key_pairs: Sequence[DeviceKeyPair],
        published_version: int,
        kdf: _KdfParams,
        master: bytes,
        token_life: TokenLife = TokenLife(),
    ) -> None:
        self._path = path
        self._user_id = user_id
        self._device_token = device_token
        self._token_life = token_life
        self._kms_key_id = kms_key_id
        self._pairs = {pair.bundle_version: pair for pair in key_pairs}
        self._published = published_version
        self._kdf = kdf
        self._file_key = _subkey(master, FORMAT)
        self._seen_key = _subkey(master, _SEEN_FORMAT)
        self._peers_key = _subkey(master, _PEERS_FORMAT)

    def __repr__(self) -> str:
        return (
            f"DeviceKeys(path={str(self._path)!r}, user_id={self._user_id!r}, "
            f"bundle_versions={sorted(self._pairs)}, published_version={self._published})"
        )

    # -- properties -------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def user_id(self) -> str:
        return self._user_id

    @property
    def device_token(self) -> str:
        """The relay device token. Secret: never log it."""
        return self._device_token

    @property
    def token_life(self) -> TokenLife:
        """When the relay device token was issued to this device and when it expires."""
        return self._token_life

    @property
    def kms_key_id(self) -> str:
        """The KMS key that seals this user's public bundles."""
        return self._kms_key_id

    @property
    def bundle_versions(self) -> list[int]:
        """Every bundle version whose private keys this device holds, oldest first."""
        return sorted(self._pairs)

    @property
    def newest(self) -> DeviceKeyPair:
        """The key pair of the highest bundle version (published or not)."""
        return self._pairs[max(self._pairs)]

    @property
    def published_version(self) -> int:
        """The newest bundle version known to be in the directory (0: none yet)."""
        return self._published

    def key_pair(self, bundle_version: int) -> DeviceKeyPair | None:
        """The key pair of `bundle_version`, or None if this device never had it."""
        return self._pairs.get(bundle_version)

    # -- create, load, change ---------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        passphrase: str | bytes,
        *,
        user_id: str,
        device_token: str,
        kms_key_id: str,
        key_pair: DeviceKeyPair,
        scrypt_n: int = SCRYPT_N,
        token_life: TokenLife = TokenLife(),
    ) -> "DeviceKeys":
        """Write a new device file holding `key_pair` (not yet published); refuse to replace one.

        Raises:
            AlreadyExistsError: a file exists at `path` (it may hold the only copy of keys).
            InvalidArgumentError: an empty passphrase, a bad user id or scrypt cost.
        """
        path = Path(path)
        cls.check_new(path, passphrase, user_id=user_id, scrypt_n=scrypt_n)
        kdf, secret = _new_kdf(scrypt_n), check_passphrase(passphrase)
        device = cls(path, user_id, device_token, kms_key_id, [key_pair], 0, kdf, kdf.derive(secret), token_life)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with _locked(path):
            if path.exists():  # made by another process since the check above
                raise _exists(path)
            device._write()
        return device

    @staticmethod
    def check_new(path: str | os.PathLike, passphrase: str | bytes, *, user_id: str, scrypt_n: int = SCRYPT_N) -> None:
        """Check what `create` will check, before anything is made (e.g. a relay account).

        Raises:
            AlreadyExistsError: a file exists at `path`.
            InvalidUserIdError, InvalidArgumentError: a bad user id, an empty passphrase, or a
                scrypt cost that is not a power of two from 2**14 to 2**20.
        """
        check_user_id(user_id)
        check_passphrase(passphrase)
        if Path(path).exists():
            raise _exists(Path(path))
        _new_kdf(scrypt_n)

    @classmethod
    def load(cls, path: str | os.PathLike, passphrase: str | bytes) -> "DeviceKeys":
        """Read and decrypt the device file at `path`.

        Raises:
            NotFoundError: no file at `path`.
            CiphertextAuthenticationError: wrong passphrase, or the file was altered.
            MalformedCiphertextError: the file is not a keyrelay device file (or a newer format).
        """
        path = Path(path)
        secret = check_passphrase(passphrase)
        header = _read_header(path)
        kdf = header.kdf
        master = kdf.derive(secret)
        body = _parse_body(path, _decrypt_body(path, header, _subkey(master, FORMAT)))
        return cls(path, header.user_id, body.token, body.kms_key_id, body.pairs, body.published, kdf, master, body.token_life)

    def add_key_pair(self, kem: str | None = None) -> DeviceKeyPair:
        """Generate the key pairs of the next bundle version (same KEM unless `kem` names one) and
        save them before returning; the version is chosen under the file lock, after re-reading
        the file, so two processes never pick the same one."""
        if kem is not None:
            kem_spec(kem)
        with _locked(self._path):
            self._reload()
            pair = DeviceKeyPair.generate(max(self._pairs) + 1, kem or self.newest.kem.name)
            self._pairs[pair.bundle_version] = pair
            self._write()
        return pair

    def replace_device_token(self, device_token: str, token_life: TokenLife) -> None:
        """Keep a new relay device token (after a rotation) in place of the old one."""
        with _locked(self._path):
            self._reload()
            self._device_token, self._token_life = device_token, token_life
            self._write()

    def mark_published(self, bundle_version: int) -> None:
        """Record that the directory holds `bundle_version` (never moves backwards)."""
        with _locked(self._path):
            self._reload()
            self._published = max(self._published, bundle_version)
            self._write()

    def refresh(self) -> None:
        """Take in key pairs and publications that another process of this device wrote."""
        with _locked(self._path):
            self._reload()

    def _reload(self) -> None:
        """Merge what another process of this device may have written (call under the lock)."""
        header = _read_header(self._path)
        if header.user_id != self._user_id or header.kdf != self._kdf:
            raise RevisionConflictError(
                f"the device file {self._path} was replaced by another process; open it again"
            )
        body = _parse_body(self._path, _decrypt_body(self._path, header, self._file_key))
        pairs, published = body.pairs, body.published
        # A token another process rotated to is the one to use: the old one stops working soon.
        self._device_token, self._token_life = body.token, body.token_life
        for pair in pairs:
            mine = self._pairs.get(pair.bundle_version)
            if mine is not None and mine.signing_private_bytes != pair.signing_private_bytes:
                raise RevisionConflictError(
                    f"bundle version {pair.bundle_version} in {self._path} differs from this process's: "
                    "open the file again"
                )
            self._pairs[pair.bundle_version] = pair
        self._published = max(self._published, published)

    def _write(self) -> None:
        body = {
            "device_token": self._device_token,
            "token_issue_time": self._token_life.issue_time,
            "token_expire_time": self._token_life.expire_time,
            "kms_key_id": self._kms_key_id,
            "published_version": self._published,
            "key_pairs": [self._pairs[v]._to_json() for v in sorted(self._pairs)],
        }
        nonce = secrets.token_bytes(_NONCE_BYTES)
        ciphertext = AESGCM(self._file_key).encrypt(
            nonce, json.dumps(body).encode(), _aad(FORMAT, self._user_id)
        )
        document = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "user_id": self._user_id,
            "kdf": self._kdf.to_json(),
            "aead": {"name": "AES-256-GCM", "nonce": _b64(nonce)},
            "ciphertext": _b64(ciphertext),
        }
        _write_private(self._path, (json.dumps(document, indent=2) + "\n").encode())

    # -- the messenger's state beside the device file --------------------------------------------

    @property
    def seen_path(self) -> Path:
        """The file beside the device file holding the messages the receiver has taken."""
        return self._path.with_name(self._path.name + ".seen")

    @property
    def peers_path(self) -> Path:
        """The file beside the device file holding the peers' key versions seen."""
        return self._path.with_name(self._path.name + ".peers")

    def load_seen(self) -> tuple[int, Any] | None:
        """The (version, content) that `save_seen` wrote; None if there is none, or it is unreadable."""
        return _read_state(self.seen_path, self._seen_key, _SEEN_FORMAT, self._user_id)

    def save_seen(self, content: Any, version: int) -> None:
        """Replace the seen-messages file with `content` (JSON) of format `version` (encrypted: who
        wrote to this user is private too)."""
        _write_state(self.seen_path, self._seen_key, _SEEN_FORMAT, self._user_id, version, content)

    def load_peers(self) -> tuple[int, Any] | None:
        """The (version, content) of the peers file; None if there is none, or it is unreadable."""
        return _read_state(self.peers_path, self._peers_key, _PEERS_FORMAT, self._user_id)

    def update_peers(self, merge: Callable[[tuple[int, Any] | None], tuple[int, Any]]) -> tuple[int, Any]:
        """Under the device file's lock, replace the peers file with `merge(what it holds)` and
        return that: two processes of one device never lose each other's changes."""
        with _locked(self._path):
            version, content = merge(self.load_peers())
            _write_state(self.peers_path, self._peers_key, _PEERS_FORMAT, self._user_id, version, content)
        return version, content


def _read_state(path: Path, key: bytes, kind: str, user_id: str) -> tuple[int, Any] | None:
    try:
        document = json.loads(path.read_bytes())
        version = document.get("version")
        if document.get("format") != kind or isinstance(version, bool) or not isinstance(version, int):
            return None
        plaintext = AESGCM(key).decrypt(
            _unb64(document["nonce"]), _unb64(document["ciphertext"]), _aad(kind, user_id, version)
        )
        return version, json.loads(plaintext)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, InvalidTag, binascii.Error):
        return None


def _write_state(path: Path, key: bytes, kind: str, user_id: str, version: int, content: Any) -> None:
    nonce = secrets.token_bytes(_NONCE_BYTES)
    ciphertext = AESGCM(key).encrypt(nonce, json.dumps(content).encode(), _aad(kind, user_id, version))
    document = {"format": kind, "version": version, "nonce": _b64(nonce), "ciphertext": _b64(ciphertext)}
    _write_private(path, json.dumps(document).encode())


@dataclass(frozen=True)
class _Header:
    user_id: str
    kdf: _KdfParams
    nonce: bytes
    ciphertext: bytes


def _read_header(path: Path) -> _Header:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"no device file at {path}: register first, or give the right path") from None
    not_device_file = MalformedCiphertextError(f"{path} is not a keyrelay device file")
    try:
        document = json.loads(raw)
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise not_device_file
        if document.get("version") != FORMAT_VERSION:
            raise MalformedCiphertextError(
                f"the device file {path} has format version {document.get('version')!r}; this SDK reads "
                f"version {FORMAT_VERSION}: upgrade the SDK"
            )
        user_id = document["user_id"]
        check_user_id(user_id)
        if document["aead"]["name"] != "AES-256-GCM":
            raise not_device_file
        return _Header(
            user_id,
            _KdfParams.from_json(document["kdf"]),
            _unb64(document["aead"]["nonce"]),
            _unb64(document["ciphertext"]),
        )
    except MalformedCiphertextError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, InvalidArgumentError):
        raise not_device_file from None


@dataclass(frozen=True)
class _Body:
    token: str
    kms_key_id: str
    pairs: list[DeviceKeyPair]
    published: int
    token_life: TokenLife


def _parse_body(path: Path, body: dict) -> _Body:
    """What a decrypted device file holds. Files written before devices kept their token's
    issue and expiry times have neither (a TokenLife of Nones)."""
    try:
        token, kms_key_id, published = body["device_token"], body["kms_key_id"], body["published_version"]
        pairs = [DeviceKeyPair._from_json(item) for item in body["key_pairs"]]
        if not pairs or not all(isinstance(v, str) and v for v in (token, kms_key_id)):
            raise ValueError("incomplete")
        if isinstance(published, bool) or not isinstance(published, int) or published < 0:
            raise ValueError("bad published version")
        times = [body.get("token_issue_time"), body.get("token_expire_time")]
        if not all(t is None or (isinstance(t, (int, float)) and not isinstance(t, bool)) for t in times):
            raise ValueError("bad token times")
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise MalformedCiphertextError(f"the device file {path} decrypted but its contents are not valid") from None
    return _Body(token, kms_key_id, pairs, published, TokenLife(*times))


def _decrypt_body(path: Path, header: _Header, key: bytes) -> dict:
    try:
        plaintext = AESGCM(key).decrypt(header.nonce, header.ciphertext, _aad(FORMAT, header.user_id))
    except (InvalidTag, ValueError):
        raise CiphertextAuthenticationError(
            f"the device file {path} did not decrypt: wrong passphrase, or the file was altered"
        ) from None
    try:
        body = json.loads(plaintext)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise MalformedCiphertextError(f"the device file {path} decrypted but its contents are not valid")
    return body
