"""What the benchmarks share: flags, the load loop and its result, the two crypto calls, the machine line.

Used by `bench_node.py` and `bench_gateway.py`; they run as scripts, so this is imported as `_common`.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from keyrelay.v1 import kms_pb2

WARMUP_SECONDS = 0.5
CALL_TIMEOUT = 10.0  # per RPC; with the cell deadline it bounds every load loop
PAYLOAD = bytes(range(32))
CONTEXT = {"bench": "1"}
OPS = ("Decrypt", "GenerateDataKey")


@dataclass
class Cell:
    """The result of one load run: completed calls, failures and their latencies."""

    ops: int
    errors: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    def pct_ms(self, q: float) -> float:
        """Nearest-rank percentile of the successful calls' latency, in milliseconds."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

    def columns(self) -> str:
        """ops/s, p50 ms, p99 ms and errors, aligned for the tables."""
        return f"{self.rate:>9,.0f} {self.pct_ms(50):>8.2f} {self.pct_ms(99):>8.2f} {self.errors:>6}"


CELL_HEADINGS = f"{'ops/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"


def parse_flags(
    parser: argparse.ArgumentParser, default: str = "1,8,32", what: str = "in-flight calls"
) -> tuple[argparse.Namespace, list[int]]:
    """Add --seconds and --concurrency to `parser`, parse, and check them: (args, concurrencies)."""
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per cell (default 3)")
    parser.add_argument("--concurrency", default=default, help=f"comma-separated {what} (default {default})")
    args = parser.parse_args()
    try:
        concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError:
        concurrencies = []
    if not concurrencies or min(concurrencies) < 1 or args.seconds <= 0:
        parser.error("--concurrency needs positive integers and --seconds a positive number")
    return args, concurrencies


async def drive(call: Callable[[], Awaitable[object]], concurrency: int, seconds: float) -> Cell:
    """Run `concurrency` tasks calling `call()` back to back for `seconds` (after a warm-up)."""
    latencies: list[float] = []
    errors: list[str] = []

    async def worker(end: float, record: bool) -> None:
        while time.perf_counter() < end:
            start = time.perf_counter()
            try:
                await call()
            except grpc.RpcError as exc:
                if record:
                    errors.append(f"{exc.code().name}: {exc.details()}")
                continue
            if record:
                latencies.append(time.perf_counter() - start)

    async def phase(duration: float, record: bool) -> float:
        began = time.perf_counter()
        tasks = [worker(began + duration, record) for _ in range(concurrency)]
        # Each task stops at the deadline; a call in flight then has CALL_TIMEOUT at most.
        await asyncio.wait_for(asyncio.gather(*tasks), duration + CALL_TIMEOUT + 5)
        return time.perf_counter() - began

    # Warm-up first so connection set-up and the node's per-session key loading are not timed.
    await phase(WARMUP_SECONDS, False)
    elapsed = await phase(seconds, True)
    if errors:
        print(f"  warning: {len(errors)} failed calls, e.g. {errors[0]}", file=sys.stderr)
    return Cell(len(latencies), len(errors), elapsed, latencies)


def crypto_calls(
    stub, key_id: str, blob: bytes, metadata: Sequence[tuple[str, str]]
) -> dict[str, Callable[[], Awaitable[object]]]:
    """Decrypt `blob` and GenerateDataKey under `key_id` (both with CONTEXT) as no-argument calls, by name."""
    # Requests are built once: the client's work per call should be the RPC, not protobuf.
    decrypt = kms_pb2.DecryptRequest(ciphertext_blob=blob, encryption_context=CONTEXT, key_id=key_id)
    gdk = kms_pb2.GenerateDataKeyRequest(key_id=key_id, number_of_bytes=32, encryption_context=CONTEXT)
    metadata = tuple(metadata)
    return {
        "Decrypt": lambda: stub.Decrypt(decrypt, metadata=metadata, timeout=CALL_TIMEOUT),
        "GenerateDataKey": lambda: stub.GenerateDataKey(gdk, metadata=metadata, timeout=CALL_TIMEOUT),
    }


def header() -> str:
    """One line naming the machine and the versions that matter for the numbers."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    return (f"machine: {platform.node()} ({cpu}), nproc={os.cpu_count()}, python {platform.python_version()}, "
            f"grpcio {grpc.__version__}, python-pkcs11 {importlib.metadata.version('python-pkcs11')}")
