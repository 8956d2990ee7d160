"""Envelope encryption of data of any size: `encrypt_stream` and `decrypt_stream`.

    from client_sdk import KmsClient, encrypt_stream, decrypt_stream

    with KmsClient() as kms:
        encrypt_stream(kms, "alias/backups", "db.dump", "db.dump.krev", context={"app": "backup"})
        decrypt_stream(kms, "db.dump.krev", "db.dump", context={"app": "backup"})

A message is encrypted under a fresh data key (DEK) from GenerateDataKey, or one reused from a
`DataKeyCache`. It is written as a header, which carries the DEK wrapped by the KMS and the
encryption context, then the data in chunks of AES-256-GCM under a key derived per message, so
memory use stays about two chunks whatever the size of the data. The byte format is specified in
`docs/envelope-format.md`; `FORMAT_VERSION` and the constants below are its numbers.

Decryption authenticates every chunk before it writes it, and notices a chunk that is altered,
moved, repeated or missing, a missing final chunk and bytes after it. Writing to a path is atomic:
a temporary file beside it is renamed into place only when the whole envelope checked out, so on
any error nothing is left at the path (and a file already there is untouched). Writing to a file
object cannot be undone: if either function raises, discard whatever was written to it.

Errors (all `KeyrelayError`): `MalformedCiphertextError` when the data is not an envelope this
code reads (wrong magic, unknown version or algorithm, a header over the limits);
`CiphertextAuthenticationError` when it was altered, truncated, reordered, or the given context
differs from the envelope's; and whatever the KMS raises for the data key (`KeyNotFoundError`,
`KeyDisabledError`, ...). Messages name the chunk and byte offsets, never key material or data.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable, Iterator, Mapping, Union

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from foundation.encryption_context import encode as canonical_context
from foundation.errors import (
    CiphertextAuthenticationError,
    InvalidArgumentError,
    InvalidEncryptionContextError,
    MalformedCiphertextError,
)

if TYPE_CHECKING:
    from client_sdk.datakey_cache import DataKeyCache
    from client_sdk.kms_client import KmsClient
    from client_sdk.types import DataKey

#: A path, or a binary file object (read from / written to at its current position).
StreamTarget = Union[str, "os.PathLike[str]", IO[bytes]]

MAGIC = b"KREV"
FORMAT_VERSION = 1
#: Algorithm 1: HKDF-SHA256 from a 32-byte DEK to a per-message AES-256-GCM key; 96-bit nonces
#: from the chunk sequence number, 128-bit tags.
ALGORITHM = 1
ALGORITHM_NAME = "AES-256-GCM/HKDF-SHA256"
DEK_BYTES = 32
MESSAGE_ID_BYTES = 32
TAG_BYTES = 16
NONCE_BYTES = 12

DEFAULT_CHUNK_SIZE = 1024 * 1024
MIN_CHUNK_SIZE = 1024
MAX_CHUNK_SIZE = 16 * 1024 * 1024
#: Chunks are numbered 0 .. MAX_CHUNKS - 1 (the index is a u32 in the AAD).
MAX_CHUNKS = 2**32
#: The KMS limits on an encryption context, which bound the header's context field.
MAX_CONTEXT_PAIRS = 64
MAX_CONTEXT_KEY_BYTES = 128
MAX_CONTEXT_VALUE_BYTES = 1024
MAX_CONTEXT_BYTES = 2 + MAX_CONTEXT_PAIRS * (2 + MAX_CONTEXT_KEY_BYTES + 4 + MAX_CONTEXT_VALUE_BYTES)
MAX_WRAPPED_KEY_BYTES = 4096

FLAG_REGULAR = 0x00
FLAG_FINAL = 0x01

# magic, version, algorithm, chunk size, message id, context length
_PREFIX = struct.Struct(">4sBBI32sI")
_BLOB_LENGTH = struct.Struct(">H")
# flag, plaintext length
_CHUNK_HEAD = struct.Struct(">BI")
_CHUNK_AAD = struct.Struct(">32sIB")
#: Bytes a chunk adds to its plaintext on the wire: flag, length, GCM tag.
CHUNK_OVERHEAD = _CHUNK_HEAD.size + TAG_BYTES
_HEADER_NONCE = bytes(NONCE_BYTES)
_KDF_INFO = b"keyrelay-envelope" + bytes((FORMAT_VERSION, ALGORITHM))


@dataclass(frozen=True)
class EnvelopeInfo:
    """What `encrypt_stream` wrote or `decrypt_stream` read (never the data key).

    Attributes:
        key_id: the KMS key that wrapped the data key (its id, even if an alias was given).
        key_version: the version of that key.
        context: the encryption context bound to the envelope.
        chunk_size: plaintext bytes per chunk (all but the final chunk are this long).
        plaintext_bytes: the length of the data.
        ciphertext_bytes: the length of the envelope, header included.
        chunks: the number of chunks, the final one included (at least 1).
        header_bytes: the length of the header; chunk i starts at
            `header_bytes + i * (chunk_size + CHUNK_OVERHEAD)`.
        message_id: the envelope's random message id, in hex (not secret).
        data_key_cached: whether the data key came from a `DataKeyCache` (always False on decrypt).
    """

    key_id: str
    key_version: int
    context: dict[str, str]
    chunk_size: int
    plaintext_bytes: int
    ciphertext_bytes: int
    chunks: int
    header_bytes: int
    message_id: str
    data_key_cached: bool = False
    format_version: int = FORMAT_VERSION
    algorithm: str = ALGORITHM_NAME


# -- public API --------------------------------------------------------------------------------


def encrypt_stream(
    kms: KmsClient,
    key_id: str,
    source: StreamTarget,
    destination: StreamTarget,
    *,
    context: Mapping[str, str] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    cache: DataKeyCache | None = None,
    progress: Callable[[int], None] | None = None,
    timeout: float | None = None,
) -> EnvelopeInfo:
    """Encrypt `source` into an envelope at `destination` under a data key of the KMS key `key_id`.

    Args:
        kms: a `KmsClient` (GenerateDataKey is called on it unless `cache` holds a usable key).
        key_id: the KMS key id or alias.
        source: a path or a binary file object, read from its current position to its end.
        destination: a path (written atomically: a 0600 temporary file beside it, fsynced and
            renamed when done, removed on any error) or a binary file object (on error, discard
            what was written to it).
        context: the encryption context; the same must be given (or none) to decrypt.
        chunk_size: plaintext bytes per chunk, MIN_CHUNK_SIZE to MAX_CHUNK_SIZE (default 1 MiB).
            Memory use is about twice this, when encrypting and when decrypting.
        cache: reuse data keys within the cache's limits instead of asking the KMS for each
            message (each message still gets its own derived key).
        progress: called with the plaintext bytes done so far after each chunk.
        timeout: the deadline of the KMS call, in seconds.

    Returns the `EnvelopeInfo` of what was written. Raises `InvalidArgumentError` for a bad
    chunk size, `InvalidEncryptionContextError` for a bad context, and the KMS's errors for the
    data key.
    """
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise InvalidArgumentError(
            f"chunk_size {chunk_size} is out of range; use {MIN_CHUNK_SIZE}-{MAX_CHUNK_SIZE} bytes"
        )
    pairs = dict(context or {})
    encoded_context = encode_context(pairs)
    with _reader(source) as src:
        size = _remaining_size(src)
        if cache is not None:
            data_key, cached = cache.data_key(kms, key_id, context=pairs, message_size=size, timeout=timeout)
        else:
            data_key = kms.generate_data_key(key_id, number_of_bytes=DEK_BYTES, context=pairs, timeout=timeout)
            cached = False
        message_id = os.urandom(MESSAGE_ID_BYTES)
        aead, header = _seal_header(data_key, message_id, chunk_size, encoded_context)
        with _writer(destination) as dst:
            _write(dst, header)
            done, written, chunks = _encrypt_chunks(aead, header, src, dst, chunk_size, progress)
    if cache is not None and size is not None and done > size:
        # The source grew while it was read: count what was really encrypted under the key.
        cache._add_bytes(key_id, encoded_context, data_key.ciphertext_blob, done - size)
    return EnvelopeInfo(
        key_id=data_key.key_id,
        key_version=data_key.key_version,
        context=pairs,
        chunk_size=chunk_size,
        plaintext_bytes=done,
        ciphertext_bytes=len(header) + written,
        chunks=chunks,
        header_bytes=len(header),
        message_id=message_id.hex(),
        data_key_cached=cached,
    )


def decrypt_stream(
    kms: KmsClient,
    source: StreamTarget,
    destination: StreamTarget,
    *,
    context: Mapping[str, str] | None = None,
    key_id: str = "",
    progress: Callable[[int], None] | None = None,
    timeout: float | None = None,
) -> EnvelopeInfo:
    """Decrypt the envelope `source` into `destination`, checking every chunk before writing it.

    Args:
        kms: a `KmsClient` that may Decrypt the envelope's data key.
        source: a path or a binary file object positioned at the envelope's first byte; it is
            read to its end (bytes after the envelope are an error).
        destination: a path (written atomically: nothing is left there unless the whole envelope
            decrypts) or a binary file object (on error, discard what was written to it: chunks
            before the bad one were genuine, but the data is incomplete).
        context: when given, it must equal the envelope's context, else
            `CiphertextAuthenticationError`; when None, the envelope's own context is used.
        key_id: when given, the KMS refuses a data key wrapped by any other key.
        progress: called with the plaintext bytes written so far after each chunk.
        timeout: the deadline of the KMS call, in seconds.

    Returns the `EnvelopeInfo` of the envelope. Raises `MalformedCiphertextError` for data that
    is not an envelope this code reads, `CiphertextAuthenticationError` for one that was altered,
    truncated or reordered, and the KMS's errors for the data key.
    """
    with _reader(source) as src:
        header = _read_header(src)
        if context is not None and encode_context(dict(context)) != header.encoded_context:
            raise CiphertextAuthenticationError(
                "the encryption context given does not match the envelope's "
                f"({_context_difference(dict(context), header.context)}); give the context it was "
                "encrypted with, or none to use the one in the envelope"
            )
        opened = kms.decrypt(header.wrapped_key, context=header.context, key_id=key_id, timeout=timeout)
        aead = _open_header(header, opened.plaintext)
        with _writer(destination) as dst:
            done, read, chunks = _decrypt_chunks(aead, header, src, dst, progress)
    return EnvelopeInfo(
        key_id=opened.key_id,
        key_version=opened.key_version,
        context=header.context,
        chunk_size=header.chunk_size,
        plaintext_bytes=done,
        ciphertext_bytes=header.size + read,
        chunks=chunks,
        header_bytes=header.size,
        message_id=header.message_id.hex(),
    )


# -- chunks ---------------------------------------------------------------------------------------


def _encrypt_chunks(
    aead: AESGCM, header: bytes, src: IO[bytes], dst: IO[bytes], chunk_size: int, progress: Callable[[int], None] | None
) -> tuple[int, int, int]:
    """Encrypt `src` to its end as chunks; return (plaintext bytes, bytes written, chunks)."""
    header_hash = hashlib.sha256(header).digest()
    done = written = index = 0
    final = False
    while not final:
        if index >= MAX_CHUNKS:
            raise InvalidArgumentError(
                f"the data is longer than an envelope holds ({MAX_CHUNKS} chunks of {chunk_size} bytes); "
                "use a larger chunk_size"
            )
        plaintext = _read_up_to(src, chunk_size, "source")
        final = len(plaintext) < chunk_size
        flag = FLAG_FINAL if final else FLAG_REGULAR
        sealed = aead.encrypt(_nonce(index), plaintext, _CHUNK_AAD.pack(header_hash, index, flag))
        _write(dst, _CHUNK_HEAD.pack(flag, len(plaintext)))
        _write(dst, sealed)
        written += _CHUNK_HEAD.size + len(sealed)
        done += len(plaintext)
        index += 1
        if progress is not None:
            progress(done)
    return done, written, index


def _decrypt_chunks(
    aead: AESGCM, header: _Header, src: IO[bytes], dst: IO[bytes], progress: Callable[[int], None] | None
) -> tuple[int, int, int]:
    """Decrypt chunks up to the final one and check nothing follows; return (plaintext bytes,
    envelope bytes read after the header, chunks)."""
    header_hash = hashlib.sha256(header.unsigned + header.tag).digest()
    chunk_size = header.chunk_size
    done = read = index = 0
    final = False
    while not final:
        offset = header.size + read
        where = f"chunk {index + 1} (envelope offset {offset})"
        head = _read_up_to(src, _CHUNK_HEAD.size, "source")
        if not head:
            raise CiphertextAuthenticationError(
                f"the envelope is truncated: it ends after {index} chunk(s) without its final chunk "
                f"(at envelope offset {offset}); the data is incomplete"
            )
        if len(head) < _CHUNK_HEAD.size:
            raise _truncated(where)
        flag, length = _CHUNK_HEAD.unpack(head)
        final = flag == FLAG_FINAL
        if index >= MAX_CHUNKS or not (length == chunk_size or final and length < chunk_size) or flag > FLAG_FINAL:
            raise CiphertextAuthenticationError(
                f"the envelope was altered at {where}: its framing (flag {flag}, length {length}) is impossible "
                f"for chunks of {chunk_size} bytes"
            )
        sealed = _read_up_to(src, length + TAG_BYTES, "source")
        if len(sealed) < length + TAG_BYTES:
            raise _truncated(where)
        try:
            plaintext = aead.decrypt(_nonce(index), sealed, _CHUNK_AAD.pack(header_hash, index, flag))
        except InvalidTag:
            raise CiphertextAuthenticationError(
                f"the envelope was altered, reordered or truncated at {where}, plaintext bytes "
                f"{done}-{done + length}: the chunk does not authenticate, so the data cannot be trusted"
            ) from None
        _write(dst, plaintext)
        read += len(head) + len(sealed)
        done += length
        index += 1
        if progress is not None:
            progress(done)
    if _read_up_to(src, 1, "source"):
        raise CiphertextAuthenticationError(
            f"the envelope has data after its final chunk (at envelope offset {header.size + read}); it was "
            "altered or concatenated with something else"
        )
    return done, read, index


# -- encryption context --------------------------------------------------------------------------


def encode_context(context: Mapping[str, str]) -> bytes:
    """The canonical encoding of an encryption context, as the envelope header carries it.

    Pairs sorted by the UTF-8 bytes of their keys, then `u16 count` and, per pair,
    `u16 len(key) || key || u32 len(value) || value` (big-endian, UTF-8). Equal contexts encode
    equally whatever their order. (The same encoding the KMS uses as the AAD of a data key.)
    """
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in context.items()):
        raise InvalidEncryptionContextError("encryption context keys and values must be strings")
    return canonical_context(context)


def decode_context(data: bytes) -> dict[str, str]:
    """Parse a canonical context encoding; `MalformedCiphertextError` unless it is exactly one."""
    try:
        (count,) = struct.unpack_from(">H", data, 0)
        offset, context, last = 2, {}, None
        if count > MAX_CONTEXT_PAIRS:
            raise ValueError(f"{count} pairs, over {MAX_CONTEXT_PAIRS}")
        for _ in range(count):
            (key_len,) = struct.unpack_from(">H", data, offset)
            key = data[offset + 2 : offset + 2 + key_len]
            offset += 2 + key_len
            (value_len,) = struct.unpack_from(">I", data, offset)
            value = data[offset + 4 : offset + 4 + value_len]
            offset += 4 + value_len
            if not 0 < key_len == len(key) <= MAX_CONTEXT_KEY_BYTES:
                raise ValueError("a key is empty, cut short or over the limit")
            if not value_len == len(value) <= MAX_CONTEXT_VALUE_BYTES:
                raise ValueError("a value is cut short or over the limit")
            if last is not None and key <= last:
                raise ValueError("pairs are not sorted by key, or a key repeats")
            last = key
            context[key.decode()] = value.decode()
        if offset != len(data):
            raise ValueError(f"{len(data) - offset} bytes follow the last pair")
    except (struct.error, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise MalformedCiphertextError(f"the envelope's encryption context is malformed: {exc}") from None
    return context


def _context_difference(given: dict[str, str], stored: dict[str, str]) -> str:
    """Which keys differ between two contexts (names only: values may be sensitive)."""
    keys = sorted(k for k in given.keys() | stored.keys() if given.get(k) != stored.get(k))
    shown = ", ".join(repr(k[:40]) for k in keys[:5]) + (", ..." if len(keys) > 5 else "")
    return f"keys that differ: {shown}"


# -- header ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Header:
    unsigned: bytes  # every header byte before the tag
    tag: bytes
    chunk_size: int
    message_id: bytes
    encoded_context: bytes
    context: dict[str, str]
    wrapped_key: bytes

    @property
    def size(self) -> int:
        return len(self.unsigned) + len(self.tag)


def _seal_header(data_key: DataKey, message_id: bytes, chunk_size: int, encoded_context: bytes) -> tuple[AESGCM, bytes]:
    """The message's AEAD and its header (fields, then the tag over them under the derived key)."""
    if len(data_key.plaintext) != DEK_BYTES or not 0 < len(data_key.ciphertext_blob) <= MAX_WRAPPED_KEY_BYTES:
        raise InvalidArgumentError(
            f"the KMS returned a {len(data_key.plaintext)}-byte data key with a {len(data_key.ciphertext_blob)}-byte "
            f"blob; an envelope needs a {DEK_BYTES}-byte key and a blob of at most {MAX_WRAPPED_KEY_BYTES} bytes"
        )
    aead = AESGCM(_derive_key(data_key.plaintext, message_id))
    unsigned = b"".join((
        _PREFIX.pack(MAGIC, FORMAT_VERSION, ALGORITHM, chunk_size, message_id, len(encoded_context)),
        encoded_context,
        _BLOB_LENGTH.pack(len(data_key.ciphertext_blob)),
        data_key.ciphertext_blob,
    ))
    return aead, unsigned + aead.encrypt(_HEADER_NONCE, b"", unsigned)


def _open_header(header: _Header, dek: bytes) -> AESGCM:
    """The message's AEAD, once the header's tag checks out under the key derived from `dek`."""
    if len(dek) != DEK_BYTES:
        raise MalformedCiphertextError(
            f"the envelope's data key is {len(dek)} bytes, not {DEK_BYTES}; it was not made by encrypt_stream"
        )
    aead = AESGCM(_derive_key(dek, header.message_id))
    try:
        aead.decrypt(_HEADER_NONCE, header.tag, header.unsigned)
    except InvalidTag:
        raise CiphertextAuthenticationError(
            "the envelope header was altered (its tag does not match); the envelope cannot be trusted"
        ) from None
    return aead


def _read_header(src: IO[bytes]) -> _Header:
    """Read and parse (not authenticate) the header; `MalformedCiphertextError` if it is not one."""
    prefix = _read_up_to(src, _PREFIX.size, "source")
    if len(prefix) < len(MAGIC) or prefix[: len(MAGIC)] != MAGIC:
        raise MalformedCiphertextError(
            "the source is not a keyrelay envelope (it does not start with the envelope magic 'KREV')"
        )
    if len(prefix) < _PREFIX.size:
        raise _malformed_header(f"it ends after {len(prefix)} bytes")
    _, version, algorithm, chunk_size, message_id, context_len = _PREFIX.unpack(prefix)
    if version != FORMAT_VERSION:
        raise MalformedCiphertextError(
            f"the envelope has format version {version}; this SDK reads version {FORMAT_VERSION} (upgrade it)"
        )
    if algorithm != ALGORITHM:
        raise MalformedCiphertextError(
            f"the envelope uses unknown algorithm {algorithm}; this SDK knows {ALGORITHM} ({ALGORITHM_NAME})"
        )
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise _malformed_header(f"its chunk size {chunk_size} is outside {MIN_CHUNK_SIZE}-{MAX_CHUNK_SIZE}")
    if context_len > MAX_CONTEXT_BYTES:
        raise _malformed_header(f"its context field claims {context_len} bytes, over {MAX_CONTEXT_BYTES}")
    encoded_context = _read_field(src, context_len, "encryption context")
    context = decode_context(encoded_context)
    (blob_len,) = _BLOB_LENGTH.unpack(_read_field(src, _BLOB_LENGTH.size, "wrapped key length"))
    if not 0 < blob_len <= MAX_WRAPPED_KEY_BYTES:
        raise _malformed_header(f"its wrapped data key claims {blob_len} bytes (1-{MAX_WRAPPED_KEY_BYTES} allowed)")
    wrapped_key = _read_field(src, blob_len, "wrapped data key")
    tag = _read_field(src, TAG_BYTES, "header tag")
    unsigned = prefix + encoded_context + _BLOB_LENGTH.pack(blob_len) + wrapped_key
    return _Header(unsigned, tag, chunk_size, message_id, encoded_context, context, wrapped_key)


def _read_field(src: IO[bytes], n: int, name: str) -> bytes:
    data = _read_up_to(src, n, "source")
    if len(data) < n:
        raise _malformed_header(f"it ends inside its {name}")
    return data


def _malformed_header(what: str) -> MalformedCiphertextError:
    return MalformedCiphertextError(f"the envelope header is malformed: {what}; the envelope was truncated or damaged")


def _truncated(where: str) -> CiphertextAuthenticationError:
    return CiphertextAuthenticationError(
        f"the envelope is truncated: it ends inside {where}; the data is incomplete"
    )


# -- keys and nonces ------------------------------------------------------------------------------


def _derive_key(dek: bytes, message_id: bytes) -> bytes:
    """The per-message AES-256 key: HKDF-SHA256(DEK, salt=message id, info=label||version||alg)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=message_id, info=_KDF_INFO).derive(dek)


def _nonce(index: int) -> bytes:
    """Chunk `index`'s nonce: its sequence number index + 1 as 96 bits (0 is the header's)."""
    return (index + 1).to_bytes(NONCE_BYTES, "big")


# -- sources and destinations --------------------------------------------------------------------


def _is_path(target: object) -> bool:
    return isinstance(target, (str, os.PathLike))


@contextmanager
def _reader(source: StreamTarget) -> Iterator[IO[bytes]]:
    """A binary file to read: `source` opened if it is a path (and closed after), else itself."""
    if _is_path(source):
        with open(source, "rb") as f:
            yield f
    else:
        yield source  # type: ignore[misc]


@contextmanager
def _writer(destination: StreamTarget) -> Iterator[IO[bytes]]:
    """A binary file to write. For a path: a 0600 temporary file beside it, fsynced and renamed
    over it when the block succeeds, removed when it raises (whatever the exception)."""
    if not _is_path(destination):
        yield destination  # type: ignore[misc]
        return
    path = Path(destination)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable (best effort: some file systems refuse to open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remaining_size(src: IO[bytes]) -> int | None:
    """Bytes from the current position to the end, if the source can tell (else None)."""
    try:
        if not src.seekable():
            return None
        here = src.tell()
        end = src.seek(0, os.SEEK_END)
        src.seek(here)
    except (AttributeError, OSError, ValueError):
        return None
    return max(end - here, 0)


def _read_up_to(src: IO[bytes], n: int, name: str) -> bytes:
    """Exactly `n` bytes, or fewer only at the end of `src` (reads again after a short read)."""
    data = src.read(n)
    if data is None or not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"the {name} must be a binary, blocking file object (read() returned {type(data).__name__})")
    if len(data) >= n or not data:
        return bytes(data)
    parts, got = [data], len(data)
    while got < n:
        more = src.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _write(dst: IO[bytes], data: bytes) -> None:
    """Write all of `data` (a raw file object may take only part of it at a time)."""
    view = memoryview(data)
    while view:
        n = dst.write(view)
        if n is None:
            return  # a writer that does not count (it took everything)
        if n <= 0:
            raise OSError("the destination accepted no bytes; give a blocking binary file object")
        view = view[n:]
