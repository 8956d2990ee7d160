"""Benchmark a KMS node against its two bounds: the raw HSM and a bare gRPC echo server.

`make bench-node` (= `.venv/bin/python bench/bench_node.py [--seconds S] [--concurrency 1,8,32]`):

1. starts a node as a user does (`keyrelay hsm init`, `keyrelay node`) on a two-slot SoftHSM pool
   and measures Decrypt and GenerateDataKey (ops/s, p50/p99 latency) at each concurrency;
2. times python-pkcs11 AES-GCM encrypts of 32 bytes on one of the same tokens (1 and 2 threads);
3. measures a bare grpc.aio echo server (another process, 32-byte payload) with the same client;
4. prints node ÷ echo and node ÷ HSM, i.e. how much of the gRPC ceiling and HSM rate the node gets.

Everything listens on 127.0.0.1 only. Every loop stops at a wall-clock deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

from _common import (
    CALL_TIMEOUT, CELL_HEADINGS, CONTEXT, PAYLOAD, WARMUP_SECONDS, crypto_calls, drive, header, parse_flags,
)
from keyrelay.v1 import kms_pb2, kms_pb2_grpc
from kms_node import devsetup

METADATA = (("keyrelay-tenant", "bench"),)
ECHO_METHOD = "/bench.Echo/Echo"
TOKENS = ["bench-a", "bench-b"]


# -- load generator ------------------------------------------------------------------------------

async def bench_node_calls(target: str, concurrencies: list[int], seconds: float) -> dict:
    """Create a key, then measure Decrypt and GenerateDataKey at each concurrency: {(op, c): Cell}."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = kms_pb2_grpc.KeyManagementServiceStub(channel)
        key = await stub.CreateKey(kms_pb2.CreateKeyRequest(description="bench"), metadata=METADATA, timeout=30)
        key_id = key.key_metadata.key_id
        encrypt = kms_pb2.EncryptRequest(key_id=key_id, plaintext=PAYLOAD, encryption_context=CONTEXT)
        blob = (await stub.Encrypt(encrypt, metadata=METADATA, timeout=30)).ciphertext_blob
        calls = crypto_calls(stub, key_id, blob, METADATA)
        return {(op, c): await drive(call, c, seconds) for c in concurrencies for op, call in calls.items()}


async def bench_echo_calls(target: str, concurrencies: list[int], seconds: float) -> dict:
    """Measure the echo server with a 32-byte payload at each concurrency: {c: Cell}."""
    async with grpc.aio.insecure_channel(target) as channel:
        echo = channel.unary_unary(ECHO_METHOD)  # no serializers: bytes in, bytes out
        call = lambda: echo(PAYLOAD, metadata=METADATA, timeout=CALL_TIMEOUT)  # noqa: E731
        return {c: await drive(call, c, seconds) for c in concurrencies}


# -- echo server ---------------------------------------------------------------------------------

async def serve_echo() -> None:
    """The hidden `--echo-server` mode: print the bound port, serve until stdin closes."""
    async def echo(request: bytes, context) -> bytes:
        return request

    server = grpc.aio.server()
    # No (de)serializers means identity: the server does no work beyond gRPC itself.
    handler = grpc.method_handlers_generic_handler("bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    # Stdin closes when the parent exits, even if it is killed, so the child never outlives it.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(0)


def bench_echo(concurrencies: list[int], seconds: float) -> dict:
    """Run this file as an echo server in its own process (its own GIL, as the node has) and measure it."""
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--echo-server"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        port = proc.stdout.readline().strip() if ready else ""
        if not port.isdigit():
            raise RuntimeError("the echo server did not report its port within 30 s")
        return asyncio.run(bench_echo_calls(f"127.0.0.1:{port}", concurrencies, seconds))
    finally:
        proc.stdin.close()  # the server's signal to stop
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- raw HSM -------------------------------------------------------------------------------------

def bench_raw_hsm(module: str, label: str, seconds: float) -> dict[int, float]:
    """AES-256-GCM encrypts of 32 bytes per second on token `label`, with 1 and 2 threads."""
    from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
    from pkcs11.mechanisms import GCMParams

    from kms_node.hsm.cryptoki import load_library

    # load_library initialises the module with OS locking, as the node does: two threads need it.
    token = load_library(module).get_token(token_label=label)
    keeper = token.open(user_pin=devsetup.DEV_PIN)  # this process's own login; the node has its own
    template = {Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.ENCRYPT: True}
    keeper.generate_key(KeyType.AES, 256, label="bench-raw", store=False, template=template)

    def rate(threads: int) -> float:
        """Encrypts per second summed over `threads` threads, each on its own session."""
        sessions = [token.open() for _ in range(threads)]  # they share the keeper's login
        # A session object is visible to all sessions of the process, but a handle is per session.
        keys = [s.get_key(object_class=ObjectClass.SECRET_KEY, label="bench-raw") for s in sessions]
        counts, deadline, go = [0] * threads, [0.0], threading.Barrier(threads + 1)

        def run(i: int) -> None:
            go.wait(30)
            n = 0
            while time.perf_counter() < deadline[0]:
                iv = (i << 64 | n).to_bytes(12, "big")  # unique per call, without a syscall
                keys[i].encrypt(PAYLOAD, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(iv, b"aad", 128))
                n += 1
            counts[i] = n

        workers = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
        for w in workers:
            w.start()
        began = time.perf_counter()
        deadline[0] = began + seconds  # set before the barrier lets the workers read it
        go.wait(30)
        for w in workers:
            w.join(seconds + 30)
        elapsed = time.perf_counter() - began
        for s in sessions:
            s.close()
        return sum(counts) / elapsed

    try:
        return {threads: rate(threads) for threads in (1, 2)}
    finally:
        keeper.close()


# -- node ----------------------------------------------------------------------------------------

def prepare_node(state: Path) -> tuple[devsetup.NodeProcess, Path, str]:
    """Provision a two-token SoftHSM pool (`keyrelay hsm init`); returns (unstarted node, conf, module)."""
    conf = devsetup.write_softhsm_conf(state)
    module = devsetup.softhsm_module()
    port = devsetup.free_port()
    config = devsetup.write_node_config(
        state / "node.toml", tokens=TOKENS, listen=f"127.0.0.1:{port}", store_path=str(state / "node.db"),
        module=module,
    )
    env = devsetup.dev_environment(conf)
    devsetup.hsm_init(config, env)
    return devsetup.NodeProcess(config, env, state / "node.log", port), conf, module


def node_failure(exc: Exception, log_path: Path) -> str:
    """A one-line reason the node did not come up: the error plus its last line of output."""
    lines = log_path.read_text(errors="replace").strip().splitlines() if log_path.exists() else []
    detail = (getattr(exc, "stderr", None) or "").strip().splitlines() or lines
    return f"bench_node: error: the node did not come up: {exc}" + (f" ({detail[-1]})" if detail else "")


def report(node: dict, echo: dict, hsm: dict[int, float], concurrencies: list[int], seconds: float) -> None:
    """Print the results table and the ratios."""
    print(header())
    print(f"{seconds:g} s per cell after {WARMUP_SECONDS:g} s warm-up; ops/s = completed calls per second")
    print(f"raw HSM (python-pkcs11 AES-256-GCM encrypt, 32 B, one token): "
          f"1 thread {hsm[1]:,.0f} ops/s, 2 threads {hsm[2]:,.0f} ops/s\n")
    cols = (f"{'conc':>4}  {'call':<15} {CELL_HEADINGS}  "
            f"{'÷echo':>6} {'÷HSM 1t':>8} {'÷HSM 2t':>8}")
    print(f"{cols}\n{'-' * len(cols)}")
    for c in concurrencies:
        e = echo[c]
        print(f"{c:>4}  {'echo (bare)':<15} {e.columns()}")
        for op in ("Decrypt", "GenerateDataKey"):
            n = node[op, c]
            print(f"{c:>4}  {op:<15} {n.columns()}  "
                  f"{n.rate / e.rate if e.rate else 0:>6.3f} {n.rate / hsm[1]:>8.3f} {n.rate / hsm[2]:>8.3f}")


def main() -> int:
    """Parse flags, run the three benchmarks in turn (never two at once), print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--echo-server", action="store_true", help=argparse.SUPPRESS)
    args, concurrencies = parse_flags(parser)
    if args.echo_server:
        asyncio.run(serve_echo())
        return 0

    wall = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="keyrelay-bench-") as tmp:
        state = Path(tmp)
        node = None
        try:
            try:
                node, conf, module = prepare_node(state)
                node.start()
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                print(node_failure(exc, state / "node.log"), file=sys.stderr)
                return 1
            print(f"node up on {node.target}; measuring Decrypt and GenerateDataKey...", file=sys.stderr)
            node_cells = asyncio.run(bench_node_calls(node.target, concurrencies, args.seconds))
            # The library reads SOFTHSM2_CONF when loaded: set it first, so we see the node's tokens.
            os.environ["SOFTHSM2_CONF"] = str(conf)
            print("measuring the raw HSM...", file=sys.stderr)
            hsm = bench_raw_hsm(module, TOKENS[0], args.seconds)
            print("measuring the bare echo server...", file=sys.stderr)
            echo_cells = bench_echo(concurrencies, args.seconds)
            if (status := node.terminate()) != 0:
                print(f"bench_node: warning: the node exited with status {status}", file=sys.stderr)
        finally:
            if node is not None:
                node.kill()  # no-op after a clean terminate(); stops it after any error above
    report(node_cells, echo_cells, hsm, concurrencies, args.seconds)
    print(f"\ntotal wall time {time.monotonic() - wall:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
