"""Benchmark the relay end to end: messages per second from Send to a subscriber, and their latency.

`make bench-relay` (= `.venv/bin/python bench/bench_relay.py [--seconds S] [--concurrency 1,10,100]`):

1. writes a relay config in a temp dir (127.0.0.1, plain text, SQLite store in the temp dir, rate
   limits off, mailbox limits out of reach) and starts `keyrelay relay` as a process;
2. creates one recipient account and one sender account per sender of the largest cell (senders
   are reused across cells), opens the recipient's Subscribe stream in this process, and sends one
   message from every sender that must arrive before measuring (connections, token cache);
3. for each concurrency N: N sender tasks call Send back to back (1 KiB of fresh random bytes per
   envelope, a unique client_message_id per message) for a warm-up and then `--seconds`. The
   subscriber notes when each message arrives and acknowledges in batches (every 100 messages or
   50 ms, whichever comes first, one Ack in flight). After the senders stop, the cell drains: it
   waits until every message whose Send succeeded has arrived and every arrival is acknowledged;
   one that has not arrived 10 s later is LOST;
4. prints per cell: msgs/s = messages whose Send started in the window and that arrived in it, per
   second of window; e2e p50/p99 = Send start -> arrival at the subscriber, over every message
   whose Send started in the window; send p50/p99 = the Send RPC alone; errors (failed Sends and
   Acks, warm-up included); lost; and the CPU of the relay and of this process over the window.

Exits 1 if any cell had an error, a lost message, a duplicate or an unexpected delivery. The load
and the subscriber share this process's event loop (grpc.aio, raw stubs, requests built per
message); everything listens on 127.0.0.1 only; the relay is stopped with SIGTERM at the end and
killed after any error or interrupt.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from _common import CALL_TIMEOUT, WARMUP_SECONDS, Cell, header, parse_flags
from keyrelay.v1 import relay_pb2, relay_pb2_grpc
from relay.devsetup import RelayProcess

DEFAULT_CONCURRENCY = "1,10,100"
RECIPIENT = "bench-recipient"
ENVELOPE_BYTES = 1024
SENDER_CHANNELS = 4          # sender i uses channel i % 4; the subscriber and its Acks have their own
ACK_EVERY = 100              # acknowledge after this many arrivals ...
ACK_INTERVAL = 0.05          # ... or after this long, whichever comes first
MAX_ACK_IDS = 1000           # the relay's limit per Ack
LOST_AFTER = 10.0            # a message sent OK and not arrived this long after its cell is lost
SETUP_TIMEOUT = 30.0
ERROR_PAUSE = 0.01           # after a failed Send, so a dead relay does not spin the loop
# Separate TCP connections per channel (grpc otherwise shares one among channels with equal args).
CHANNEL_OPTIONS = (("grpc.use_local_subchannel_pool", 1),)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# Mailboxes far out of reach and messages that never expire: the bench measures delivery alone.
# (Rate limits are off in every relay `RelayProcess` starts.)
RELAY_EXTRA = """\
[mailbox]
max_messages = 1000000
max_bytes = 4294967296
message_ttl_seconds = 0
"""


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


# -- what one cell measured ----------------------------------------------------------------------

@dataclass
class CellRun:
    """One concurrency's run: its window, what the senders and the subscriber saw."""

    senders: int
    t0: float = 0.0                       # window start (after the warm-up), perf_counter
    t1: float = 0.0                       # window end: no Send starts after it
    send_latencies: list[float] = field(default_factory=list)   # Send RPCs started in the window
    arrivals: list[tuple[float, float]] = field(default_factory=list)  # (send start, arrival), all of the cell
    sent_ok: int = 0
    errors: int = 0
    error_sample: str = ""
    lost: int = 0
    cpu: dict[str, float] = field(default_factory=dict)        # process -> % of one core over the window

    def note_error(self, what: str) -> None:
        self.errors += 1
        self.error_sample = self.error_sample or what

    @property
    def seconds(self) -> float:
        return self.t1 - self.t0

    def e2e(self) -> Cell:
        """msgs/s (started and arrived in the window) and Send start -> arrival of those started in it."""
        started = [(s, r) for s, r in self.arrivals if self.t0 <= s < self.t1]
        in_window = sum(1 for _, r in started if r < self.t1)
        return Cell(in_window, self.errors, self.seconds, [r - s for s, r in started])

    def send(self) -> Cell:
        return Cell(len(self.send_latencies), self.errors, self.seconds, self.send_latencies)


# -- the recipient: one Subscribe stream, batched Acks ----------------------------------------------

class Recipient:
    """The Subscribe stream and the acknowledger; matches arrivals to sends by client_message_id."""

    def __init__(self, stub: relay_pb2_grpc.RelayServiceStub, token: str) -> None:
        self.stub = stub
        self.metadata = bearer(token)
        # client_message_id -> (send start, the cell it belongs to), from just before Send until arrival.
        self.pending: dict[str, tuple[float, CellRun]] = {}
        self.confirmed: set[str] = set()   # Send answered OK, not arrived yet
        self.seen: set[str] = set()        # message ids delivered on this stream
        self.to_ack: list[str] = []
        self.acking = False
        self.ack_ready = asyncio.Event()
        self.received = 0
        self.acked = 0
        self.duplicates = 0
        self.unexpected = 0
        self.ack_errors = 0
        self.failure: str | None = None
        self.cell: CellRun | None = None   # where Ack errors are counted
        self._closing = False
        self._call = None
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._call = self.stub.Subscribe(relay_pb2.SubscribeRequest(), metadata=self.metadata)
        self._tasks = [asyncio.create_task(self._receive()), asyncio.create_task(self._acknowledge())]

    async def _receive(self) -> None:
        try:
            async for response in self._call:
                now = time.perf_counter()
                message = response.message
                if message.message_id in self.seen:
                    self.duplicates += 1
                    continue
                self.seen.add(message.message_id)
                self.received += 1
                entry = self.pending.pop(message.client_message_id, None)
                if entry is None:
                    self.unexpected += 1
                else:
                    start, cell = entry
                    cell.arrivals.append((start, now))
                    self.confirmed.discard(message.client_message_id)
                self.to_ack.append(message.message_id)
                if len(self.to_ack) >= ACK_EVERY:
                    self.ack_ready.set()
            if not self._closing:
                self.failure = "the Subscribe stream ended"
        except grpc.RpcError as exc:
            if not self._closing:
                self.failure = f"the Subscribe stream failed: {exc.code().name}: {exc.details()}"
        if self.failure:
            print(f"bench_relay: error: {self.failure}", file=sys.stderr)

    async def _acknowledge(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.ack_ready.wait(), ACK_INTERVAL)
            self.ack_ready.clear()
            while self.to_ack:
                batch, self.to_ack = self.to_ack[:MAX_ACK_IDS], self.to_ack[MAX_ACK_IDS:]
                self.acking = True
                try:
                    answer = await self.stub.Ack(
                        relay_pb2.AckRequest(message_ids=batch), metadata=self.metadata, timeout=CALL_TIMEOUT
                    )
                    self.acked += answer.deleted_count
                except grpc.RpcError as exc:
                    self.ack_errors += 1
                    if self.cell is not None:
                        self.cell.note_error(f"Ack: {exc.code().name}: {exc.details()}")
                    self.to_ack = batch + self.to_ack  # retry them with the next round
                    await asyncio.sleep(ACK_INTERVAL)
                    break
                finally:
                    self.acking = False

    def settled(self) -> bool:
        """Every message sent OK has arrived and every arrival is acknowledged."""
        return not self.confirmed and not self.to_ack and not self.acking

    async def drain(self, timeout: float) -> list[str]:
        """Wait until settled (at most `timeout`); returns the client message ids still missing."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline and self.failure is None and not self.settled():
            self.ack_ready.set()
            await asyncio.sleep(0.005)
        missing = sorted(self.confirmed)
        for cmid in missing:  # reported once; if one still arrives, it counts as unexpected
            self.pending.pop(cmid, None)
        self.confirmed.clear()
        return missing

    async def close(self) -> None:
        self._closing = True
        if self._call is not None:
            self._call.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# -- senders -------------------------------------------------------------------------------------

async def sender(stub, metadata, tag: str, recipient: Recipient, cell: CellRun, end: float) -> None:
    """Send back to back until `end`: fresh 1 KiB envelopes, one unique client_message_id each."""
    n = 0
    while time.perf_counter() < end:
        cmid = f"{tag}-{n}"
        n += 1
        request = relay_pb2.SendRequest(
            recipient_user_id=RECIPIENT, envelope=os.urandom(ENVELOPE_BYTES), client_message_id=cmid
        )
        start = time.perf_counter()
        recipient.pending[cmid] = (start, cell)
        try:
            await stub.Send(request, metadata=metadata, timeout=CALL_TIMEOUT)
        except grpc.RpcError as exc:
            cell.note_error(f"Send: {exc.code().name}: {exc.details()}")
            await asyncio.sleep(ERROR_PAUSE)
            continue
        done = time.perf_counter()
        cell.sent_ok += 1
        if cmid in recipient.pending:  # it may have arrived before the answer did
            recipient.confirmed.add(cmid)
        if start >= cell.t0:
            cell.send_latencies.append(done - start)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # the process is gone
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


async def sample_cpu(cell: CellRun, pids: dict[str, int]) -> None:
    """CPU of each process over the cell's window, in % of one core."""
    await asyncio.sleep(max(0.0, cell.t0 - time.perf_counter()))
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    await asyncio.sleep(max(0.0, cell.t1 - time.perf_counter()))
    for name, pid in pids.items():
        cell.cpu[name] = 100 * (cpu_seconds(pid) - before[name]) / cell.seconds


async def run_cell(stubs, tokens: list[str], recipient: Recipient, senders: int, seconds: float,
                   pids: dict[str, int]) -> CellRun:
    """One concurrency: warm-up, the window, then the drain."""
    cell = CellRun(senders)
    recipient.cell = cell
    began = time.perf_counter()
    cell.t0 = began + WARMUP_SECONDS
    cell.t1 = cell.t0 + seconds
    tasks = [
        sender(stubs[i % len(stubs)], bearer(tokens[i]), f"c{senders}-s{i}", recipient, cell, cell.t1)
        for i in range(senders)
    ]
    # Each task stops at t1; a call in flight then has CALL_TIMEOUT at most.
    await asyncio.wait_for(asyncio.gather(sample_cpu(cell, pids), *tasks),
                           WARMUP_SECONDS + seconds + CALL_TIMEOUT + 5)
    missing = await recipient.drain(LOST_AFTER)
    cell.lost = len(missing)
    if missing:
        print(f"  LOST: {len(missing)} messages sent OK never arrived within {LOST_AFTER:g} s, "
              f"e.g. {', '.join(missing[:5])}", file=sys.stderr)
    if cell.errors:
        print(f"  warning: {cell.errors} failed calls, e.g. {cell.error_sample}", file=sys.stderr)
    return cell


# -- set-up --------------------------------------------------------------------------------------

async def create_accounts(stub, senders: int) -> tuple[str, list[str]]:
    """The recipient's token and `senders` sender tokens."""
    async def create(user_id: str) -> str:
        answer = await stub.CreateAccount(relay_pb2.CreateAccountRequest(user_id=user_id), timeout=SETUP_TIMEOUT)
        return answer.device_token

    tokens = await asyncio.gather(create(RECIPIENT), *(create(f"bench-sender-{i}") for i in range(senders)))
    return tokens[0], list(tokens[1:])


async def prime(stubs, tokens: list[str], recipient: Recipient) -> None:
    """One message from every sender, all arrived and acknowledged: connections up, tokens cached."""
    cell = CellRun(len(tokens))
    cell.t0 = cell.t1 = time.perf_counter() + SETUP_TIMEOUT  # nothing of it is measured
    recipient.cell = cell
    for i in range(len(tokens)):
        cmid = f"prime-s{i}"
        recipient.pending[cmid] = (time.perf_counter(), cell)
        recipient.confirmed.add(cmid)

    async def one(i: int) -> None:
        request = relay_pb2.SendRequest(recipient_user_id=RECIPIENT, envelope=os.urandom(ENVELOPE_BYTES),
                                        client_message_id=f"prime-s{i}")
        await stubs[i % len(stubs)].Send(request, metadata=bearer(tokens[i]), timeout=SETUP_TIMEOUT)

    await asyncio.gather(*(one(i) for i in range(len(tokens))))
    if missing := await recipient.drain(SETUP_TIMEOUT):
        raise RuntimeError(f"{len(missing)} of the first messages never reached the subscriber")


async def measure(target: str, concurrencies: list[int], seconds: float,
                  pids: dict[str, int]) -> tuple[list[CellRun], Recipient]:
    """Accounts, the subscriber, the priming round, then every cell in turn."""
    asyncio.get_running_loop().set_exception_handler(_quiet_cancellation)
    async with contextlib.AsyncExitStack() as stack:
        channels = [
            await stack.enter_async_context(grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS))
            for _ in range(SENDER_CHANNELS + 1)
        ]
        stubs = [relay_pb2_grpc.RelayServiceStub(c) for c in channels[1:]]
        recipient_token, tokens = await create_accounts(stubs[0], max(concurrencies))
        recipient = Recipient(relay_pb2_grpc.RelayServiceStub(channels[0]), recipient_token)
        recipient.start()
        stack.push_async_callback(recipient.close)
        await prime(stubs, tokens, recipient)
        cells = []
        for c in concurrencies:
            print(f"  {c} senders...", file=sys.stderr)
            cells.append(await run_cell(stubs, tokens, recipient, c, seconds, pids))
            if recipient.failure:
                break
        return cells, recipient


def _quiet_cancellation(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """After Ctrl-C the load loops are cancelled mid-call: that is no error worth a traceback."""
    if not isinstance(context.get("exception"), asyncio.CancelledError):
        loop.default_exception_handler(context)


# -- report --------------------------------------------------------------------------------------

def report(cells: list[CellRun], recipient: Recipient, seconds: float, processes: dict[str, str],
           state: Path) -> None:
    print(header())
    print("processes (both on the same cores, none pinned):")
    for name, what in processes.items():
        print(f"  {name:<6} {what}")
    print(f"relay: plain text (TLS off) on loopback; SQLite store in {state} ({filesystem(state)}); "
          "rate limits off; mailbox limits 1,000,000 messages / 4 GiB")
    print(f"load: N sender tasks (own accounts, {SENDER_CHANNELS} channels) each calling Send back to back with "
          f"{ENVELOPE_BYTES} B of fresh random bytes; one recipient Subscribe stream (own channel) in this "
          f"process, Ack every {ACK_EVERY} messages or {ACK_INTERVAL * 1000:g} ms")
    print(f"{seconds:g} s per cell after {WARMUP_SECONDS:g} s warm-up; msgs/s = messages sent and received in the "
          "window, per second; e2e = Send start -> arrival at the subscriber; send = the Send RPC alone;\n"
          "errors = failed Sends and Acks (warm-up included); lost = sent OK, not arrived "
          f"{LOST_AFTER:g} s after the cell; cpu = % of one core over the window\n")
    cols = (f"{'senders':>7} {'msgs/s':>9} {'e2e p50 ms':>10} {'e2e p99 ms':>10} {'send p50 ms':>11} "
            f"{'send p99 ms':>11} {'errors':>6} {'lost':>5} {'relay cpu':>9} {'bench cpu':>9}")
    print(f"{cols}\n{'-' * len(cols)}")
    for cell in cells:
        e2e, send = cell.e2e(), cell.send()
        print(f"{cell.senders:>7} {e2e.rate:>9,.0f} {e2e.pct_ms(50):>10.2f} {e2e.pct_ms(99):>10.2f} "
              f"{send.pct_ms(50):>11.2f} {send.pct_ms(99):>11.2f} {cell.errors:>6} {cell.lost:>5} "
              f"{cell.cpu.get('relay', 0):>8.0f}% {cell.cpu.get('bench', 0):>8.0f}%")
    print(f"\nsubscriber: {recipient.received:,} messages received, {recipient.acked:,} acknowledged and deleted, "
          f"{recipient.duplicates} duplicates, {recipient.unexpected} unexpected")


def filesystem(path: Path) -> str:
    """The type of the file system holding `path` (from /proc/mounts), e.g. 'ext4'."""
    best, kind = "", "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and str(path.resolve()).startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    return kind


def problems(cells: list[CellRun], recipient: Recipient, expected: int) -> list[str]:
    found = []
    if failed := [c.senders for c in cells if c.errors]:
        found.append(f"cells with failed calls (senders {', '.join(map(str, failed))})")
    if lost := sum(c.lost for c in cells):
        found.append(f"{lost} LOST messages (sent OK, never received)")
    if recipient.duplicates or recipient.unexpected:
        found.append(f"{recipient.duplicates} duplicate and {recipient.unexpected} unexpected deliveries")
    if recipient.failure:
        found.append(recipient.failure)
    if len(cells) < expected:
        found.append(f"only {len(cells)} of {expected} cells ran")
    if recipient.acked != recipient.received:
        found.append(f"{recipient.received} received but {recipient.acked} deleted by Ack")
    return found


def _interrupt(signum: int, frame) -> None:
    """Ctrl-C and SIGTERM raise at once, wherever we are, and unwind through the finally blocks."""
    raise KeyboardInterrupt if signum == signal.SIGINT else SystemExit(128 + signum)


def relay_failure(exc: Exception, log_path: Path) -> str:
    lines = log_path.read_text(errors="replace").strip().splitlines() if log_path.exists() else []
    return f"bench_relay: error: the relay did not come up: {exc}" + (f" ({lines[-1]})" if lines else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args, concurrencies = parse_flags(parser, DEFAULT_CONCURRENCY, "numbers of concurrent senders")
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)

    wall = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="keyrelay-bench-relay-") as tmp:
        state = Path(tmp)
        relay = RelayProcess(state, extra=RELAY_EXTRA).process
        try:
            try:
                relay.start(SETUP_TIMEOUT)
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                print(relay_failure(exc, relay.log_path), file=sys.stderr)
                return 1
            pids = {"relay": relay.proc.pid, "bench": os.getpid()}
            processes = {
                "bench": f"pid {os.getpid()}: this script, every sender and the subscriber (one grpc.aio event loop)",
                "relay": f"pid {relay.proc.pid}: keyrelay relay on {relay.target}",
            }
            print(f"relay up on {relay.target}; measuring...", file=sys.stderr)
            cells, recipient = asyncio.run(measure(relay.target, concurrencies, args.seconds, pids))
            if (status := relay.terminate()) != 0:
                print(f"bench_relay: warning: the relay exited with status {status}", file=sys.stderr)
        except (grpc.RpcError, RuntimeError, asyncio.TimeoutError) as exc:
            if isinstance(exc, grpc.RpcError):
                detail = f"{exc.code().name}: {exc.details()}"
            else:
                detail = str(exc) or type(exc).__name__
            print(f"bench_relay: error: {detail}", file=sys.stderr)
            return 1
        finally:
            relay.kill()  # no-op after a clean terminate(); stops it after any error or interrupt
        report(cells, recipient, args.seconds, processes, state)
    print(f"\ntotal wall time {time.monotonic() - wall:.1f} s")
    if found := problems(cells, recipient, len(concurrencies)):
        for problem in found:
            print(f"bench_relay: error: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the finally block in main() has stopped the relay by now
        print("bench_relay: interrupted", file=sys.stderr)
        sys.exit(130)
