"""Unix seconds as protobuf Timestamps, for every servicer."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp


def timestamp(seconds: float) -> Timestamp:
    """A protobuf Timestamp for a time in Unix seconds (UTC)."""
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts
