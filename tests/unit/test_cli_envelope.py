"""The progress bar of `keyrelay envelope`: percent and sizes when the total is known, bytes and
rate when it is not, and no more than one redraw per tenth of a second."""

from __future__ import annotations

import io

from client_sdk.cli.envelope_commands import ProgressBar


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_with_a_known_total():
    clock, out = Clock(), io.StringIO()
    bar = ProgressBar(4 * 1024 * 1024, out, clock)
    clock.now += 1
    bar(1024 * 1024)
    assert out.getvalue().endswith("[#######.......................]  25% 1.0 MiB of 4.0 MiB, 1.0 MiB/s ")
    bar(2 * 1024 * 1024)  # within 0.1 s of the last redraw: not drawn
    assert out.getvalue().count("\r") == 1
    clock.now += 1
    bar.finish()
    assert " 50% 2.0 MiB of 4.0 MiB" in out.getvalue() and out.getvalue().endswith("\n")


def test_progress_of_a_stream_of_unknown_size():
    clock, out = Clock(), io.StringIO()
    bar = ProgressBar(None, out, clock)
    clock.now += 2
    bar(3000)
    bar.finish()
    assert out.getvalue().startswith("\r2.9 KiB, 1.5 KiB/s") and "%" not in out.getvalue()
