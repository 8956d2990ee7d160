"""Running a BatchDecrypt or BatchGenerateDataKey whose items go to different places.

An entry point resolves each item's key first; items refused there (unknown key, key not covered,
key on an instance the call may not reach from here) get their error in place, as a node would
report it, and the rest go, grouped by destination, to where their keys live, concurrently. The
results come back in the order of the items.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Hashable, Sequence, TypeVar

from foundation.errors import KeyrelayError
from keyrelay.v1 import errors_pb2, kms_pb2

T = TypeVar("T")

#: Batch method -> (response type, result type).
BATCH_TYPES = {
    "BatchDecrypt": (kms_pb2.BatchDecryptResponse, kms_pb2.BatchDecryptResult),
    "BatchGenerateDataKey": (kms_pb2.BatchGenerateDataKeyResponse, kms_pb2.BatchGenerateDataKeyResult),
}


def item_error(exc: KeyrelayError) -> errors_pb2.ItemError:
    """The per-item form of an error in a batch response."""
    return errors_pb2.ItemError(code=exc.code.value[0], reason=exc.reason, message=exc.message)


async def dispatch_batch(
    method: str,
    request: Any,
    targets: Sequence[T | KeyrelayError],
    send: Callable[[T, Any], Awaitable[Any]],
    group: Callable[[T], Hashable] = lambda target: target,
) -> Any:
    """Send the items of `request` to their `targets` (one per item), those with the same
    `group(target)` in one call and the groups concurrently; an item whose target is an error
    gets that error. Returns the merged response."""
    response_type, result_type = BATCH_TYPES[method]
    items = request.items
    results: list[Any] = [None] * len(items)
    groups: dict[Hashable, tuple[T, list[int]]] = {}
    for index, target in enumerate(targets):
        if isinstance(target, KeyrelayError):
            results[index] = result_type(error=item_error(target))
        else:
            groups.setdefault(group(target), (target, []))[1].append(index)

    async def one(target: T, indexes: list[int]) -> None:
        part = request if len(indexes) == len(items) else type(request)(items=[items[i] for i in indexes])
        reply = await send(target, part)
        for index, result in zip(indexes, reply.results):
            results[index] = result

    await asyncio.gather(*(one(target, indexes) for target, indexes in groups.values()))
    return response_type(results=results)
