"""`keyrelay envelope encrypt|decrypt IN OUT`: files of any size, envelope-encrypted by streaming.

    keyrelay envelope encrypt --key alias/backups --context host=db1 dump.sql dump.sql.kre
    keyrelay envelope decrypt --context host=db1 dump.sql.kre dump.sql

The data is encrypted in chunks under a data key from GenerateDataKey (see
`docs/envelope-format.md`); memory stays constant whatever the size. `-` reads stdin or writes
stdout. Output files appear only when complete: a failed or interrupted run (a tampered or
truncated envelope, a wrong context) leaves nothing at OUT. A progress bar is drawn on stderr when
it is a terminal (`--progress` forces it, `--no-progress` hides it).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import IO, Callable

from client_sdk.cli import _output as output
from client_sdk.envelope import decrypt_stream, encrypt_stream
from client_sdk.kms_client import KmsClient

_BAR_WIDTH = 30
_REDRAW_SECONDS = 0.1


class ProgressBar:
    """A one-line progress bar on `stream`: bytes done, of the total when known, and the rate."""

    def __init__(self, total: int | None, stream: IO[str] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._total = total
        self._stream = stream if stream is not None else sys.stderr
        self._clock = clock
        self._started = clock()
        self._drawn = 0.0
        self._done = 0

    def __call__(self, done: int) -> None:
        self._done = done
        now = self._clock()
        if now - self._drawn >= _REDRAW_SECONDS:
            self._drawn = now
            self._draw(now)

    def finish(self) -> None:
        """Draw the final state and end the line."""
        self._draw(self._clock())
        self._stream.write("\n")
        self._stream.flush()

    def _draw(self, now: float) -> None:
        rate = self._done / max(now - self._started, 1e-6)
        if self._total:
            filled = min(_BAR_WIDTH, _BAR_WIDTH * self._done // self._total)
            bar = f"[{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] {100 * self._done // self._total:3d}% "
            amount = f"{_size(self._done)} of {_size(self._total)}"
        else:
            bar, amount = "", _size(self._done)
        self._stream.write(f"\r{bar}{amount}, {_size(rate)}/s ")
        self._stream.flush()


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover - the loop returns


def _stream_arg(path: str, mode: str):
    """A path, or stdin/stdout's binary stream for `-`."""
    if path != "-":
        return path
    return sys.stdin.buffer if mode == "r" else sys.stdout.buffer


def _progress(args: argparse.Namespace) -> ProgressBar | None:
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    if not show:
        return None
    total = os.path.getsize(args.source) if args.source != "-" and os.path.isfile(args.source) else None
    return ProgressBar(total)


def _run(kms: KmsClient, args: argparse.Namespace, operation):
    if args.source != "-" and args.destination != "-" and os.path.abspath(args.source) == os.path.abspath(args.destination):
        raise output.CliError("IN and OUT are the same file; write the result elsewhere")
    bar = _progress(args)
    try:
        info = operation(kms, args, bar)
    finally:
        if bar is not None:
            bar.finish()
    return info


def _encrypt(kms: KmsClient, args: argparse.Namespace):
    def operation(kms, args, bar):
        return encrypt_stream(
            kms, args.key, _stream_arg(args.source, "r"), _stream_arg(args.destination, "w"),
            context=args.context, chunk_size=args.chunk_kib * 1024, progress=bar,
        )

    return _run(kms, args, operation)


def _decrypt(kms: KmsClient, args: argparse.Namespace):
    def operation(kms, args, bar):
        return decrypt_stream(
            kms, _stream_arg(args.source, "r"), _stream_arg(args.destination, "w"),
            context=args.context or None, key_id=args.key, progress=bar,
        )

    return _run(kms, args, operation)


def _summary(info) -> str:
    context = ", ".join(f"{k}={v}" for k, v in sorted(info.context.items())) or "-"
    return output.format_fields([
        ("key id", info.key_id),
        ("key version", str(info.key_version)),
        ("context", context),
        ("plaintext bytes", str(info.plaintext_bytes)),
        ("envelope bytes", str(info.ciphertext_bytes)),
        ("chunks", str(info.chunks)),
    ])


def register(commands) -> None:
    """Add `envelope encrypt` and `envelope decrypt` to the `keyrelay` parser."""
    common = output.common_options()
    group = output.add_group(
        commands, "envelope", "encrypt or decrypt files of any size with a data key (streaming)",
        "keyrelay envelope encrypt --key alias/backups dump.sql dump.sql.kre",
    )

    def command(name: str, help: str, examples: list[str], action) -> argparse.ArgumentParser:
        parser = output.add_command(group, name, help, examples, parents=[common])
        parser.set_defaults(func=_with_summary(action))
        parser.add_argument("source", metavar="IN", help="the file to read ('-' for stdin)")
        parser.add_argument("destination", metavar="OUT", help="the file to write, only once complete ('-' for stdout)")
        output.add_context_option(parser)
        progress = parser.add_mutually_exclusive_group()
        progress.add_argument("--progress", dest="progress", action="store_true", default=None,
                              help="draw a progress bar on stderr (default: when stderr is a terminal)")
        progress.add_argument("--no-progress", dest="progress", action="store_false", help="draw no progress bar")
        return parser

    p = command(
        "encrypt", "envelope-encrypt IN into OUT under a data key of a master key",
        ["keyrelay envelope encrypt --key alias/backups --context host=db1 dump.sql dump.sql.kre",
         "tar c photos | keyrelay envelope encrypt --key alias/backups - photos.tar.kre"],
        _encrypt,
    )
    p.add_argument("--key", required=True, metavar="KEY", help="key id or alias/NAME whose data key encrypts the file")
    p.add_argument("--chunk-kib", type=output.int_in_range(1, 16 * 1024), default=1024, metavar="N",
                   help="plaintext KiB per chunk (default 1024)")
    p = command(
        "decrypt", "decrypt an envelope IN into OUT, checking every chunk before it is written",
        ["keyrelay envelope decrypt --context host=db1 dump.sql.kre dump.sql",
         "keyrelay envelope decrypt photos.tar.kre - | tar x"],
        _decrypt,
    )
    p.add_argument("--key", default="", metavar="KEY", help="refuse an envelope whose data key another key wrapped")


def _with_summary(action):
    @output.guarded
    def run(args: argparse.Namespace) -> int:
        with output.connect(KmsClient, args) as kms:
            info = action(kms, args)
        if args.output == "json":
            text = output.format_json(info)
        else:
            text = _summary(info)
        # Data on stdout keeps stdout for itself: the summary goes to stderr then.
        print(text, file=sys.stderr if args.destination == "-" else sys.stdout)
        return 0

    return run
