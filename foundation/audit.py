"""A tamper-evident audit log: one JSON line per request, each line chained to the one before.

Every line is the canonical JSON (`json.dumps(sort_keys=True, separators=(",", ":"))`) of one
record: the fields the caller gives, plus

- `seq`: 1, 2, 3, ... in the order the records were appended;
- `prev`: the SHA-256 (hex) of the previous line's bytes without its newline, or 64 zeros on the
  first line;
- `hash`: the SHA-256 (hex) of the canonical JSON of the record without `hash`.

The record schema the gateway writes (one record per request; the caller chooses the fields)::

    time               RFC 3339 UTC with milliseconds, e.g. "2025-01-31T12:00:00.123Z" (`utc_now()`)
    request_id         the call's request id (x-request-id)
    tenant             the caller's tenant
    access_point       the access point of the caller's credential
    credential_serial  the serial of the client certificate
    zone               the listener's network zone
    peer               the peer address
    operation          the RPC method name, e.g. "Decrypt"
    key_id             the key the request named or resolved to ("" when none)
    key_version        the key version used (0 when none)
    route              "shared" | "instance:<id>" | "local" | "none"
    status             the gRPC status code name, e.g. "OK", "NOT_FOUND"
    reason             the keyrelay error reason ("" on success)
    latency_ms         the time the call took, in milliseconds

Records must never hold plaintext, data keys, key material, PINs, private keys or tokens: only
names, ids, statuses and timings. The log does not (and cannot) check that; the caller must.

`verify(path)` names the first record that was edited, dropped, inserted or moved, and a last line
that a crash left incomplete. What the chain cannot show on its own:

- Records cut off the *end* of the file leave a shorter, intact chain. Compare `records` (or
  `head`, the hash of the last line) with what you expect, e.g. a head hash written elsewhere.
- Whoever can rewrite the whole file can recompute every hash from the edit onwards; the chain
  makes edits evident, not impossible. Anchor the head hash outside the machine to catch that.

Only one `AuditLog` may have a file open at a time (an exclusive `flock`): two writers would fork
the chain. Several processes each need a file of their own.
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import hashlib
import json
import os
import threading
from typing import Any, Mapping

#: The `prev` of the first record.
GENESIS = "0" * 64
_CHAIN_FIELDS = ("seq", "prev", "hash")
_TAIL_CHUNK = 64 * 1024


class AuditLogError(Exception):
    """The audit log cannot be opened or written: another writer holds it, or its tail is bad."""


def utc_now() -> str:
    """The current time as RFC 3339 UTC with milliseconds, the format of the `time` field."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _canonical(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_line(line: bytes) -> tuple[dict[str, Any] | None, str]:
    """Parse one line (without newline): (record, "") when it is an untouched record, else
    (the record as far as it parsed, or None, and what is wrong with it)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None, "it is not valid JSON"
    if not isinstance(record, dict):
        return None, "it is not a JSON object"
    seq, prev, digest = record.get("seq"), record.get("prev"), record.get("hash")
    if type(seq) is not int or not isinstance(prev, str) or not isinstance(digest, str):
        return None, "it lacks a whole-number seq, a prev or a hash"
    body = {k: v for k, v in record.items() if k != "hash"}
    try:
        canonical = _canonical(record) == line and _sha256(_canonical(body)) == digest
    except ValueError:
        canonical = False
    if not canonical:
        return record, "its content does not match its hash"
    return record, ""


class AuditLog:
    """An append-only, hash-chained JSON-lines audit log (see the module docstring).

    `AuditLog(path)` opens the file for appending (creating it with mode 0640) and continues the
    chain of the records already in it; it raises `AuditLogError` when the file's last line is not
    a valid record, rather than silently starting a new chain. `append` is thread-safe and writes
    and flushes every record before it returns; `close` also syncs the file to disk.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise AuditLogError(f"audit log {self.path} is open in another writer") from None
            self._seq, self._head = self._read_tail(fd)
        except BaseException:
            os.close(fd)
            raise
        self._file = os.fdopen(fd, "ab")
        self._lock = threading.Lock()

    def _read_tail(self, fd: int) -> tuple[int, str]:
        """The seq and line hash of the file's last record, or (0, GENESIS) for an empty file."""
        size = os.fstat(fd).st_size
        if size == 0:
            return 0, GENESIS
        tail = b""
        offset = size
        while offset > 0 and b"\n" not in tail[:-1]:
            step = min(_TAIL_CHUNK, offset)
            offset -= step
            tail = os.pread(fd, step, offset) + tail
        advice = f"run `keyrelay audit verify {self.path}`, then move the file aside to start a new chain"
        if not tail.endswith(b"\n"):
            raise AuditLogError(
                f"audit log {self.path}: the last line is incomplete (a writer stopped mid-record); {advice}"
            )
        line = tail[:-1].rpartition(b"\n")[2]
        record, problem = _check_line(line)
        if problem or record is None or record["seq"] < 1:
            raise AuditLogError(f"audit log {self.path}: the last line is not a valid record; {advice}")
        return record["seq"], _sha256(line)

    @property
    def seq(self) -> int:
        """The seq of the last record written (0 when the log is empty)."""
        return self._seq

    @property
    def head(self) -> str:
        """The SHA-256 of the last line: anchor it elsewhere to detect a cut-off tail."""
        return self._head

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one record (JSON-serialisable fields, no `seq`, `prev` or `hash`) and flush it.

        The caller must never put plaintext, keys, PINs or tokens in a record.
        """
        reserved = [name for name in _CHAIN_FIELDS if name in record]
        if reserved:
            raise ValueError(f"audit records must not set {', '.join(reserved)}: the log sets them")
        with self._lock:
            if self._file.closed:
                raise AuditLogError(f"audit log {self.path} is closed")
            body = {**record, "seq": self._seq + 1, "prev": self._head}
            line = _canonical({**body, "hash": _sha256(_canonical(body))})
            self._file.write(line + b"\n")
            self._file.flush()
            self._seq += 1
            self._head = _sha256(line)

    def close(self) -> None:
        """Sync the file to disk and close it; closing twice is harmless."""
        with self._lock:
            if self._file.closed:
                return
            try:
                self._file.flush()
                os.fsync(self._file.fileno())
            finally:
                self._file.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    """The result of `verify`.

    Attributes:
        ok: every line is an untouched record that follows the one before it.
        records: the number of good records before the first bad line (all of them when ok).
        first_bad_line: the 1-based line number of the first bad line, or None.
        first_bad_seq: the seq that line claims, when it has one.
        problem: a sentence naming the line and what is wrong with it ("" when ok).
        head: the SHA-256 of the last good line (GENESIS for an empty log); compare it with an
            anchored value to detect records cut off the end.
    """

    ok: bool
    records: int
    first_bad_line: int | None = None
    first_bad_seq: int | None = None
    problem: str = ""
    head: str = GENESIS


def verify(path: str | os.PathLike[str]) -> VerifyReport:
    """Check the chain of an audit log and name its first bad line.

    Raises OSError when the file cannot be read (FileNotFoundError when it does not exist).
    """
    head = GENESIS
    number = 0

    def bad(seq: int | None, problem: str) -> VerifyReport:
        return VerifyReport(False, number - 1, number, seq, problem, head)

    with open(path, "rb") as file:
        for raw in file:
            number += 1
            if not raw.endswith(b"\n"):
                return bad(None, f"line {number} is incomplete (no newline at the end of the file): "
                                 "a writer stopped mid-record")
            line = raw[:-1]
            record, problem = _check_line(line)
            if record is None:
                return bad(None, f"line {number} was edited: {problem}")
            seq = record["seq"]
            if problem:
                return bad(seq, f"line {number} (seq {seq}) was edited: {problem}")
            if seq != number:
                return bad(seq, f"line {number}: expected seq {number}, found {seq}: "
                                "a record was dropped before it or records were moved")
            if record["prev"] != head:
                follows = "does not start the chain" if number == 1 else f"does not follow line {number - 1}"
                return bad(seq, f"line {number} (seq {seq}): {follows}: a record was dropped, inserted or moved")
            head = _sha256(line)
    return VerifyReport(True, number, head=head)
