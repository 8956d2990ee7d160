"""Envelope encryption of a 200 MiB file in constant memory, against `keyrelay node` as a real
process; then truncated, reordered and altered envelopes against the same node.

The round trip runs in a Python process of its own, which reports its peak RSS two ways: its
`ru_maxrss` and the kernel's `VmHWM` of its address space. Linux carries a process's `ru_maxrss`
over into a child it forks and into what that child execs, so a direct child of pytest (hundreds
of MiB after the unit tests) would report pytest's peak; the child is therefore started through
`/bin/sh`, which forks it from the shell's small address space."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import client_sdk as kr
from client_sdk import KmsClient
from client_sdk.envelope import CHUNK_OVERHEAD, EnvelopeInfo, decrypt_stream, encrypt_stream

MIB = 1024 * 1024
BIG_FILE_BYTES = 200 * MIB
RSS_LIMIT_MIB = 100
CONTEXT = {"file": "e2e"}

ROUND_TRIP = r"""
import json, resource, sys, time

from client_sdk import KmsClient
from client_sdk.envelope import decrypt_stream, encrypt_stream

target, key_id, source, sealed, back = sys.argv[1:6]
context = {"file": "e2e"}


def maxrss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def hwm_mib():
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


with KmsClient(target, tenant="acme", timeout=30) as kms:
    kms.describe_key(key_id)  # channel up and modules loaded before the baseline is taken
    baseline = hwm_mib()
    started = time.perf_counter()
    written = encrypt_stream(kms, key_id, source, sealed, context=context)
    encrypted = time.perf_counter()
    read = decrypt_stream(kms, sealed, back, context=context)
    decrypted = time.perf_counter()
print(json.dumps({
    "baseline_hwm_mib": baseline,
    "maxrss_mib": maxrss_mib(),
    "hwm_mib": hwm_mib(),
    "encrypt_seconds": encrypted - started,
    "decrypt_seconds": decrypted - encrypted,
    "chunks": written.chunks,
    "chunk_size": written.chunk_size,
    "ciphertext_bytes": written.ciphertext_bytes,
    "plaintext_bytes": read.plaintext_bytes,
}))
"""


def _write_random_file(path: Path, size: int, piece: int = MIB) -> str:
    """Write `size` random bytes a piece at a time; return their SHA-256."""
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for offset in range(0, size, piece):
            data = os.urandom(min(piece, size - offset))
            digest.update(data)
            f.write(data)
    return digest.hexdigest()


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MIB):
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture
def node_key(dev_pool):
    """A running node process and a key of tenant `acme` on it: (target, key_id)."""
    node = dev_pool.start()
    with KmsClient(node.target, tenant="acme", timeout=30) as kms:
        key = kms.create_key(description="envelope e2e")
    return node.target, key.key_id


def test_a_200_mib_file_round_trips_in_under_100_mib_of_rss(node_key, tmp_path):
    target, key_id = node_key
    source, sealed, back = tmp_path / "big.bin", tmp_path / "big.krev", tmp_path / "big.back"
    expected = _write_random_file(source, BIG_FILE_BYTES)
    script = tmp_path / "round_trip.py"
    script.write_text(ROUND_TRIP)

    # `; exit $?` keeps the shell from exec'ing python in its own place: it forks it (see above).
    child = subprocess.run(
        ["/bin/sh", "-c", '"$0" "$@"; exit $?', sys.executable, str(script), target, key_id, str(source),
         str(sealed), str(back)],
        capture_output=True, text=True, timeout=180,
    )
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout)
    print(f"\nenvelope round trip of 200 MiB: {report}")

    assert report["maxrss_mib"] < RSS_LIMIT_MIB, report
    assert report["hwm_mib"] < RSS_LIMIT_MIB, report
    assert report["plaintext_bytes"] == BIG_FILE_BYTES
    assert report["chunks"] == BIG_FILE_BYTES // report["chunk_size"] + 1
    assert sealed.stat().st_size == report["ciphertext_bytes"]
    assert _sha256_of(back) == expected
    sealed.unlink()
    back.unlink()


# -- tampering, against the node process -------------------------------------------------------

CHUNK = 256 * 1024


@pytest.fixture
def sealed_file(node_key, tmp_path):
    """A file of 13 full 256 KiB chunks and a 1000-byte final one, sealed:
    (kms, envelope bytes, info, work dir)."""
    target, key_id = node_key
    work = tmp_path / "tamper"
    work.mkdir()
    (work / "plain").write_bytes(os.urandom(13 * CHUNK + 1000))
    with KmsClient(target, tenant="acme", timeout=30) as kms:
        info = encrypt_stream(kms, key_id, work / "plain", work / "sealed", context=CONTEXT, chunk_size=CHUNK)
        assert info.chunks == 14
        yield kms, (work / "sealed").read_bytes(), info, work


def _span(info: EnvelopeInfo, index: int) -> tuple[int, int]:
    start = info.header_bytes + index * (CHUNK + CHUNK_OVERHEAD)
    return start, start + CHUNK + CHUNK_OVERHEAD


def _flip(data: bytes, position: int) -> bytes:
    forged = bytearray(data)
    forged[position] ^= 0x04
    return bytes(forged)


def _tampered(envelope: bytes, info: EnvelopeInfo) -> dict[str, tuple[bytes, type, str | None]]:
    """Forgeries of `envelope`: name -> (bytes, the error expected, what its message says)."""
    last_full_end = _span(info, 12)[1]
    (a0, a1), (b0, b1) = _span(info, 4), _span(info, 5)
    auth = kr.CiphertextAuthenticationError
    return {
        "final chunk dropped": (envelope[:last_full_end], auth, "ends after 13 chunk"),
        "cut inside a chunk": (envelope[: _span(info, 7)[0] + CHUNK // 2], auth, "ends inside chunk 8"),
        "cut inside the final chunk": (envelope[:-10], auth, "ends inside chunk 14"),
        "two chunks swapped": (envelope[:a0] + envelope[b0:b1] + envelope[a0:a1] + envelope[b1:], auth, "at chunk 5 "),
        "a bit flipped in a chunk": (_flip(envelope, _span(info, 9)[0] + 1000), auth, "at chunk 10 "),
        "a bit flipped in the message id": (_flip(envelope, 20), auth, "header was altered"),
        "a bit flipped in the wrapped key": (_flip(envelope, info.header_bytes - 30), auth, None),
        "a bit flipped in the magic": (_flip(envelope, 0), kr.MalformedCiphertextError, "not a keyrelay envelope"),
        "bytes appended": (envelope + b"more", auth, "data after its final chunk"),
    }


def test_tampered_envelopes_fail_clearly_and_leave_no_output(sealed_file):
    kms, envelope, info, work = sealed_file
    for name, (forged, error, message) in _tampered(envelope, info).items():
        (work / "forged").write_bytes(forged)
        with pytest.raises(error, match=message) as caught:
            decrypt_stream(kms, work / "forged", work / "out", context=CONTEXT)
        assert isinstance(caught.value, kr.KeyrelayError), name
        assert not (work / "out").exists(), f"{name}: partial plaintext left at the output path"
        assert sorted(p.name for p in work.iterdir()) == ["forged", "plain", "sealed"], name


def test_a_failed_decrypt_leaves_an_existing_output_file_untouched(sealed_file):
    kms, envelope, info, work = sealed_file
    (work / "forged").write_bytes(envelope[: _span(info, 12)[1]])
    (work / "out").write_bytes(b"the previous contents")
    with pytest.raises(kr.CiphertextAuthenticationError, match="truncated"):
        decrypt_stream(kms, work / "forged", work / "out")
    assert (work / "out").read_bytes() == b"the previous contents"
    # The genuine envelope still decrypts over it.
    decrypt_stream(kms, work / "sealed", work / "out")
    assert (work / "out").read_bytes() == (work / "plain").read_bytes()
