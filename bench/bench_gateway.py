"""Benchmark the gateway against a direct call to its node and against a bare forwarding proxy.

`make bench-gateway` (= `.venv/bin/python bench/bench_gateway.py [--seconds S] [--concurrency 1,8,32]`):

1. builds a development cluster with one shared node (`DevCluster(shared_replicas=1)`) in a temp
   dir and starts `keyrelay node` (shared-1) and `keyrelay gateway` as processes;
2. through the bootstrap admin, gives tenant `bench` an admin and a crypto-user access point
   (key patterns ``*``), creates a key with the first and encrypts a payload with the second;
3. measures Decrypt and GenerateDataKey (ops/s, p50/p99 latency) at each concurrency on three paths:
   - **direct**: to the node's internal port, mutual TLS with the gateway's internal client
     certificate and `keyrelay-tenant: bench`, as the gateway itself calls it;
   - **proxy**: to a bare grpc.aio proxy in another process (multiprocessing, spawn) that forwards
     the raw bytes of the two methods to the node over the same kind of channel. Its listener uses
     TLS with the gateway's own server certificate and asks for a KMS-CA client certificate, so
     the client's leg costs what it costs at the gateway;
   - **gateway**: to the gateway with the crypto-user's credential;
4. prints each cell with gateway ÷ direct, proxy ÷ direct and gateway ÷ proxy (of ops/s): the
   proxy is the cost of one hop, gateway ÷ proxy what the gateway's own work costs on top of it.

The load comes from this process (grpc.aio, one channel per path, requests built once). Cells run
one at a time, interleaved by path. Everything listens on 127.0.0.1 only; every process started
here is stopped on exit, on an error, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import grpc

from _common import (
    CELL_HEADINGS, CONTEXT, OPS, PAYLOAD, WARMUP_SECONDS, Cell, crypto_calls, drive, header, parse_flags,
)
from client_sdk import AdminClient, KmsClient
from client_sdk.credentials import CredentialBundle
from foundation.errors import KeyrelayError
from foundation.tls import channel_credentials, channel_credentials_from_pem, server_credentials
from keyrelay.v1 import kms_pb2_grpc
from kms_gateway.devcluster import DevCluster

TENANT = "bench"
TENANT_METADATA = (("keyrelay-tenant", TENANT),)
SERVICE = "keyrelay.v1.KeyManagementService"
PATHS = ("direct", "proxy", "gateway")
# The per-tenant limiter (default 1000/s) would refuse calls; raised out of reach, its check still runs.
GATEWAY_EXTRA = "[rate_limit]\nrequests_per_second = 1000000.0\nburst = 1000000\n"
SETUP_TIMEOUT = 30.0


@dataclass(frozen=True)
class Target:
    """Where one path's calls go and how: address, channel credentials, metadata."""

    address: str
    credentials: grpc.ChannelCredentials
    metadata: tuple[tuple[str, str], ...] = ()


# -- bare proxy (its own process) ----------------------------------------------------------------

def serve_proxy(upstream: str, internal: tuple[str, str, str], listener: tuple[str, str, str],
                conn: Connection) -> None:
    """The proxy process: forward Decrypt and GenerateDataKey as raw bytes to `upstream`.

    `internal` is (CA, cert, key) for mutual TLS to the node; `listener` is (cert, key, client CA)
    for its own port. Sends its port on `conn` and serves until the parent closes `conn` or dies.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the parent stops us
    asyncio.run(_serve_proxy(upstream, internal, listener, conn))


async def _serve_proxy(upstream: str, internal: tuple[str, str, str], listener: tuple[str, str, str],
                       conn: Connection) -> None:
    channel = grpc.aio.secure_channel(upstream, channel_credentials(*internal))

    def forward(method: str) -> grpc.RpcMethodHandler:
        call = channel.unary_unary(f"/{SERVICE}/{method}")  # no serializers: bytes in, bytes out

        async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            try:
                return await call(request, metadata=TENANT_METADATA, timeout=context.time_remaining())
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details() or "")

        return grpc.unary_unary_rpc_method_handler(handler)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {m: forward(m) for m in OPS}),))
    port = server.add_secure_port("127.0.0.1:0", server_credentials(*listener))
    await server.start()
    conn.send(port)
    with contextlib.suppress(EOFError):  # EOF: the parent closed its end, or exited
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
    await server.stop(0)
    await channel.close()


class ProxyProcess:
    """The bare proxy in a spawned process (its own GIL and event loop, as the gateway has)."""

    def __init__(self, upstream: str, internal: tuple[str, str, str], listener: tuple[str, str, str]) -> None:
        self._conn, child_conn = multiprocessing.Pipe()
        self.process = multiprocessing.get_context("spawn").Process(
            target=serve_proxy, args=(upstream, internal, listener, child_conn), name="bench-proxy", daemon=True,
        )
        self.process.start()
        child_conn.close()  # only the child holds it now, so its recv sees EOF if we go away
        if not self._conn.poll(SETUP_TIMEOUT):
            self.stop()
            raise RuntimeError(f"the proxy did not report its port within {SETUP_TIMEOUT:g} s")
        self.port: int = self._conn.recv()

    def stop(self) -> None:
        """Close the pipe (the proxy's signal to stop), then wait; terminate it if it does not."""
        self._conn.close()
        self.process.join(10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)


# -- set-up --------------------------------------------------------------------------------------

def provision(cluster: DevCluster) -> tuple[CredentialBundle, str, bytes]:
    """As the bootstrap admin, make the tenant's access points; returns (crypto-user bundle, key id, blob)."""
    files = cluster.admin_credentials()
    operator = CredentialBundle.from_files(files["ca"], files["cert"], files["key"])
    bundles = {}
    with AdminClient(cluster.gateway_target, credentials=operator, timeout=SETUP_TIMEOUT) as admin:
        for role in ("admin", "crypto-user"):
            point = admin.create_access_point(TENANT, f"{TENANT}-{role}", role, key_patterns=["*"])
            issued = admin.issue_credential(point.access_point_id)
            bundles[role] = CredentialBundle(issued.ca_certificate_pem, issued.certificate_pem, issued.private_key_pem)
    with KmsClient(cluster.gateway_target, credentials=bundles["admin"], timeout=SETUP_TIMEOUT) as kms:
        key_id = kms.create_key(description="bench-gateway").key_id
    with KmsClient(cluster.gateway_target, credentials=bundles["crypto-user"], timeout=SETUP_TIMEOUT) as kms:
        blob = kms.encrypt(key_id, PAYLOAD, context=CONTEXT).ciphertext_blob
    return bundles["crypto-user"], key_id, blob


def gateway_listener_files(cluster: DevCluster) -> tuple[str, str, str]:
    """The gateway's own (server cert, key, client CA), read from its config, for the proxy's listener."""
    with open(cluster.daemons["gateway"].config, "rb") as fh:
        tls = tomllib.load(fh)["tls"]
    return tls["cert"], tls["key"], tls["client_ca"]


def startup_failure(exc: Exception, cluster: DevCluster) -> str:
    """One line for a cluster that did not come up: the error and each daemon log's last line."""
    tails = []
    for log in sorted(cluster.logs.glob("*.log")):
        lines = log.read_text(errors="replace").strip().splitlines()
        if lines:
            tails.append(f"{log.stem}: {lines[-1]}")
    detail = (getattr(exc, "stderr", None) or "").strip().splitlines()[-1:] + tails
    return f"bench_gateway: error: the cluster did not come up: {exc}" + (f" ({'; '.join(detail)})" if detail else "")


# -- measurement ---------------------------------------------------------------------------------

async def measure(targets: dict[str, Target], key_id: str, blob: bytes, concurrencies: list[int],
                  seconds: float) -> dict[tuple[str, str, int], Cell]:
    """Every (path, op, concurrency) cell, one at a time, paths interleaved so drift hits all alike."""
    asyncio.get_running_loop().set_exception_handler(_quiet_cancellation)
    async with contextlib.AsyncExitStack() as stack:
        calls = {}
        for path, target in targets.items():
            channel = await stack.enter_async_context(grpc.aio.secure_channel(target.address, target.credentials))
            calls[path] = crypto_calls(kms_pb2_grpc.KeyManagementServiceStub(channel), key_id, blob, target.metadata)
        cells = {}
        for c in concurrencies:
            for op in OPS:
                for path in PATHS:
                    print(f"  {op} x{c} via {path}...", file=sys.stderr)
                    cells[path, op, c] = await drive(calls[path][op], c, seconds)
        return cells


def _quiet_cancellation(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """After Ctrl-C the load loops are cancelled mid-call: that is no error worth a traceback."""
    if not isinstance(context.get("exception"), asyncio.CancelledError):
        loop.default_exception_handler(context)


def ratio(a: Cell, b: Cell) -> str:
    return f"{a.rate / b.rate:.3f}" if b.rate else "-"


def report(cells: dict, concurrencies: list[int], seconds: float, processes: dict[str, str]) -> None:
    """Print the machine, who runs where, what each path is, and the table with its ratios."""
    print(header())
    print("processes (all on the same cores, none pinned):")
    for name, what in processes.items():
        print(f"  {name:<8} {what}")
    print("paths: direct  = client -> node (mTLS, gateway's internal cert, keyrelay-tenant metadata)\n"
          "       proxy   = client -> bare proxy (mTLS, gateway's server cert) -> node (as direct); bytes, no parsing\n"
          "       gateway = client -> keyrelay gateway (mTLS, access-point cert) -> node")
    print(f"{seconds:g} s per cell after {WARMUP_SECONDS:g} s warm-up; ops/s = completed calls per second; "
          "ratios are of ops/s\n")
    cols = f"{'conc':>4}  {'call':<15} {'path':<8} {CELL_HEADINGS}  {'÷direct':>8} {'÷proxy':>7}"
    print(f"{cols}\n{'-' * len(cols)}")
    for c in concurrencies:
        for op in OPS:
            direct, proxy, gateway = (cells[path, op, c] for path in PATHS)
            print(f"{c:>4}  {op:<15} {'direct':<8} {direct.columns()}")
            print(f"{c:>4}  {op:<15} {'proxy':<8} {proxy.columns()}  {ratio(proxy, direct):>8}")
            print(f"{c:>4}  {op:<15} {'gateway':<8} {gateway.columns()}  {ratio(gateway, direct):>8} "
                  f"{ratio(gateway, proxy):>7}")


def _interrupt(signum: int, frame) -> None:
    """Ctrl-C and SIGTERM raise at once, wherever we are, and unwind through the finally blocks.

    Installed for SIGINT too: asyncio.run's own handler only cancels the main task, and a grpc.aio
    call swallows that cancellation (it ends as an RpcError the load loop counts and goes on).
    """
    raise KeyboardInterrupt if signum == signal.SIGINT else SystemExit(128 + signum)


def main() -> int:
    """Parse flags, bring the cluster and the proxy up, measure every cell, stop everything, print."""
    args, concurrencies = parse_flags(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    wall = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="keyrelay-bench-gateway-") as tmp:
        cluster = DevCluster(Path(tmp), shared_replicas=1, gateway_extra=GATEWAY_EXTRA)
        proxy = None
        try:
            try:
                cluster.prepare()
                cluster.start("shared-1", "gateway")
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                print(startup_failure(exc, cluster), file=sys.stderr)
                return 1
            try:
                crypto_user, key_id, blob = provision(cluster)
            except KeyrelayError as exc:
                print(f"bench_gateway: error: setting up the tenant failed: {exc}", file=sys.stderr)
                return 1
            node = cluster.shared_endpoints[0]
            internal = (str(cluster.internal_ca), *map(str, cluster.gateway_client))
            proxy = ProxyProcess(node, internal, gateway_listener_files(cluster))
            client = channel_credentials_from_pem(crypto_user.ca_cert, crypto_user.client_cert, crypto_user.client_key)
            targets = {
                "direct": Target(node, channel_credentials(*internal), TENANT_METADATA),
                "proxy": Target(f"127.0.0.1:{proxy.port}", client),
                "gateway": Target(cluster.gateway_target, client),
            }
            processes = {
                "bench": f"pid {os.getpid()}: this script, the grpc.aio client of every cell",
                "node": f"pid {cluster.daemons['shared-1'].process.proc.pid}: keyrelay node shared-1 on {node}",
                "gateway": f"pid {cluster.daemons['gateway'].process.proc.pid}: keyrelay gateway on "
                           f"{cluster.gateway_target}",
                "proxy": f"pid {proxy.process.pid}: bare grpc.aio proxy (multiprocessing, spawn) on "
                         f"{targets['proxy'].address}",
            }
            print(f"cluster up in {tmp}; measuring...", file=sys.stderr)
            cells = asyncio.run(measure(targets, key_id, blob, concurrencies, args.seconds))
            for name, status in cluster.stop().items():
                if status != 0:
                    print(f"bench_gateway: warning: {name} exited with status {status}", file=sys.stderr)
        finally:
            if proxy is not None:
                proxy.stop()
            cluster.kill_all()  # no-op after a clean stop(); stops them after any error or interrupt
    report(cells, concurrencies, args.seconds, processes)
    print(f"\ntotal wall time {time.monotonic() - wall:.1f} s")
    if failed := sum(1 for cell in cells.values() if cell.errors):
        print(f"bench_gateway: error: {failed} cells had failed calls; their numbers are not comparable",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the finally blocks in main() have stopped every process by now
        print("bench_gateway: interrupted", file=sys.stderr)
        sys.exit(130)
