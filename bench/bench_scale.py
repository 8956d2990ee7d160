"""Throughput with one and with two replicas of every role on one PostgreSQL.

`make bench-scale` (= `.venv/bin/python bench/bench_scale.py [--seconds S] [--concurrency 4,16]
[--postgres DSN] [--replicas 1,2]`): for each replica count R,

1. creates a database of its own on the PostgreSQL server (`--postgres`, default the local one)
   and runs `keyrelay dev up --postgres ... --replicas R` in a temporary directory: R gateways,
   two shared nodes, R dedicated nodes and R relays as processes;
2. measures, at each concurrency, spread round-robin over the R gateways or relays:
   - **Encrypt**: 32 bytes under a shared key, with the crypto-user credential, through the gateways;
   - **Send**: 1 KiB envelopes, each in-flight call a sender of its own writing to a mailbox of
     its own, through the relays (every call a committed PostgreSQL transaction);
3. stops the cluster (`keyrelay dev down`) and drops the database.

The load comes from this process (grpc.aio, one channel per daemon, requests built once), on the
same machine as every daemon and the database, so the numbers say how the roles share this
machine's cores, not what R machines would do; `docs/scaling.md` reads them.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import grpc
import psycopg

from _common import CELL_HEADINGS, CONTEXT, PAYLOAD, Cell, drive, header, parse_flags
from client_sdk import KmsClient
from client_sdk.credentials import load_profile
from devstack.processes import port_in_use
from devstack.stack import DevStack
from foundation.tls import channel_credentials_from_pem
from keyrelay.v1 import kms_pb2, kms_pb2_grpc, relay_pb2, relay_pb2_grpc
from kms_node import devsetup

DEFAULT_POSTGRES = os.environ.get("KEYRELAY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
CALL_TIMEOUT = 10.0
ENVELOPE = os.urandom(1024)


def free_base(span: int = 80) -> int:
    for base in range(21000, 60000, 100):
        if not any(port_in_use("127.0.0.1", base + offset) for offset in range(span)):
            return base
    raise SystemExit("bench-scale: no free run of ports on 127.0.0.1")


def keyrelay(*args: str) -> None:
    done = subprocess.run([*devsetup.keyrelay_command(), *args], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"bench-scale: keyrelay {' '.join(args[:2])} failed:\n{done.stdout}\n{done.stderr}")


async def encrypt_cell(targets: list[str], profile: Path, key_id: str, concurrency: int, seconds: float) -> Cell:
    bundle = load_profile(profile).credentials
    credentials = channel_credentials_from_pem(bundle.ca_cert, bundle.client_cert, bundle.client_key)
    channels = [grpc.aio.secure_channel(t, credentials) for t in targets]
    stubs = itertools.cycle([kms_pb2_grpc.KeyManagementServiceStub(c) for c in channels])
    request = kms_pb2.EncryptRequest(key_id=key_id, plaintext=PAYLOAD, encryption_context=CONTEXT)
    try:
        return await drive(lambda: next(stubs).Encrypt(request, timeout=CALL_TIMEOUT), concurrency, seconds)
    finally:
        for channel in channels:
            await channel.close()


async def send_cell(targets: list[str], concurrency: int, seconds: float) -> Cell:
    channels = [grpc.aio.insecure_channel(t) for t in targets]
    stubs = [relay_pb2_grpc.RelayServiceStub(c) for c in channels]
    run = uuid.uuid4().hex[:8]
    senders = []
    for index in range(concurrency):
        # Each sender writes to a mailbox of its own on the other replica's side: many users, no
        # single hot mailbox (whose account row every send must lock).
        stub = stubs[index % len(stubs)]
        recipient = f"inbox-{run}-{index}"
        await stubs[(index + 1) % len(stubs)].CreateAccount(
            relay_pb2.CreateAccountRequest(user_id=recipient), timeout=CALL_TIMEOUT
        )
        response = await stub.CreateAccount(
            relay_pb2.CreateAccountRequest(user_id=f"sender-{run}-{index}"), timeout=CALL_TIMEOUT
        )
        senders.append((stub, recipient, (("authorization", f"Bearer {response.device_token}"),)))
    turn = itertools.cycle(senders)
    counter = itertools.count()

    def send():
        stub, recipient, metadata = next(turn)
        request = relay_pb2.SendRequest(
            recipient_user_id=recipient, envelope=ENVELOPE, client_message_id=f"m-{next(counter)}"
        )
        return stub.Send(request, metadata=metadata, timeout=CALL_TIMEOUT)

    try:
        return await drive(send, concurrency, seconds)
    finally:
        for channel in channels:
            await channel.close()


def measure(replicas: int, postgres: str, concurrencies: list[int], seconds: float) -> dict[tuple[str, int], Cell]:
    database = f"kr_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")
    state = Path(tempfile.mkdtemp(prefix="keyrelay-bench-scale-")) / "state"
    results: dict[tuple[str, int], Cell] = {}
    try:
        dsn = postgres.rsplit("/", 1)[0] + f"/{database}"
        keyrelay("dev", "up", "--state-dir", str(state), "--port-base", str(free_base()), "--postgres", dsn,
                 "--replicas", str(replicas))
        daemons = DevStack(state).load_state()["daemons"]
        gateways = [d.address for name, d in daemons.items() if name.startswith("gateway")]
        relays = [d.address for name, d in daemons.items() if name.startswith("relay")]
        with KmsClient(profile=state / "profile.toml") as admin:
            key_id = admin.create_key(description="bench-scale").key_id
        for concurrency in concurrencies:
            results["Encrypt", concurrency] = asyncio.run(
                encrypt_cell(gateways, state / "app.toml", key_id, concurrency, seconds)
            )
            print(f"  R={replicas} Encrypt c={concurrency:<4} {results['Encrypt', concurrency].columns()}", flush=True)
            results["Send", concurrency] = asyncio.run(send_cell(relays, concurrency, seconds))
            print(f"  R={replicas} Send    c={concurrency:<4} {results['Send', concurrency].columns()}", flush=True)
    finally:
        subprocess.run([*devsetup.keyrelay_command(), "dev", "down", "--state-dir", str(state)],
                       capture_output=True, timeout=120)
        with psycopg.connect(postgres, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, help=f"server to create databases on ({DEFAULT_POSTGRES})")
    parser.add_argument("--replicas", default="1,2", help="comma-separated replica counts (default 1,2)")
    args, concurrencies = parse_flags(parser, default="4,16", what="in-flight calls")
    replica_counts = [int(r) for r in args.replicas.split(",") if r.strip()]
    print(header())
    print(f"{args.seconds:g} s per cell; load from this process on the same cores as every daemon and PostgreSQL")
    table = {r: measure(r, args.postgres, concurrencies, args.seconds) for r in replica_counts}
    print(f"\n{'op':<8} {'c':>4} {'R':>2} {CELL_HEADINGS}")
    for (op, concurrency) in table[replica_counts[0]]:
        for replicas in replica_counts:
            print(f"{op:<8} {concurrency:>4} {replicas:>2} {table[replicas][op, concurrency].columns()}")
    failed = sum(cell.errors for cells in table.values() for cell in cells.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
