"""Where a key lives: registry records and dedicated instances, resolved through the shared KMS and cached.

The gateway resolves every key reference it routes (claims 4 and 5) with the shared KMS's
`KeyRegistryService.ResolveKey`, and every dedicated instance with `AdminService.DescribeInstance`.
Both answers are cached for `ttl` seconds; a change the gateway itself makes to a key drops that
key's entries at once (`invalidate`), so this gateway never routes on a state it knows is stale.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable, Sequence

from foundation.upstream import ReplicaSet
from keyrelay.v1 import admin_pb2, kms_pb2, registry_pb2

TENANT_METADATA_KEY = "keyrelay-tenant"
ADMIN_SCOPE_METADATA_KEY = "keyrelay-admin-scope"
_RESOLVE = "/keyrelay.v1.KeyRegistryService/ResolveKey"
_DESCRIBE_INSTANCE = "/keyrelay.v1.AdminService/DescribeInstance"
_MAX_ENTRIES = 100_000


class _TtlCache:
    """A bounded LRU of values that expire `ttl` seconds after they were stored."""

    def __init__(self, ttl: float, clock: Callable[[], float]) -> None:
        self.ttl = ttl
        self._clock = clock
        self._items: OrderedDict[tuple, tuple[float, object]] = OrderedDict()

    def get(self, key: tuple):
        item = self._items.get(key)
        if item is None or item[0] <= self._clock():
            return None
        self._items.move_to_end(key)
        return item[1]

    def put(self, key: tuple, value: object) -> None:
        if self.ttl <= 0:
            return
        self._items[key] = (self._clock() + self.ttl, value)
        self._items.move_to_end(key)
        if len(self._items) > _MAX_ENTRIES:
            self._items.popitem(last=False)

    def drop(self, predicate: Callable[[tuple, object], bool]) -> None:
        for key in [k for k, (_, v) in self._items.items() if predicate(k, v)]:
            del self._items[key]


class KeyDirectory:
    """Resolves key references and instances through the shared KMS, with a TTL cache.

    Args:
        shared: the shared KMS replicas.
        ttl: seconds a record or instance is trusted.
        operator_tenant: the tenant whose scope covers every instance.
        on_lookup: called with True on a cache hit and False on a miss (metrics).
    """

    def __init__(
        self,
        shared: ReplicaSet,
        *,
        ttl: float,
        operator_tenant: str,
        timeout: float = 5.0,
        on_lookup: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._shared = shared
        self._records = _TtlCache(ttl, clock)
        self._instances = _TtlCache(ttl, clock)
        self._operator_tenant = operator_tenant
        self._timeout = timeout
        self._on_lookup = on_lookup or (lambda hit: None)

    async def resolve(self, tenant_id: str, ref: str, metadata: Sequence[tuple[str, str]]) -> registry_pb2.KeyRecord:
        """The record of a key id or alias of `tenant_id` (KeyNotFoundError/AliasNotFoundError if none)."""
        cached = self._records.get((tenant_id, ref))
        self._on_lookup(cached is not None)
        if cached is not None:
            return cached
        reply = await self._shared.call(
            _RESOLVE,
            registry_pb2.ResolveKeyRequest(tenant_id=tenant_id, key_ref=ref),
            registry_pb2.ResolveKeyResponse,
            metadata=metadata,
            timeout=self._timeout,
            idempotent=True,
        )
        record = reply.record
        # A key still being created is not cached: its state is about to change elsewhere.
        if record.state != kms_pb2.KEY_STATE_CREATING:
            self._records.put((tenant_id, ref), record)
            if ref != record.key_id:
                self._records.put((tenant_id, record.key_id), record)
        return record

    def invalidate(self, key_id: str) -> None:
        """Forget every cached reference to `key_id`, by id or alias (after this gateway changed the key)."""
        self._records.drop(lambda _key, record: record.key_id == key_id)

    async def instance(self, instance_id: str, metadata: Sequence[tuple[str, str]]) -> admin_pb2.Instance:
        """A registered dedicated instance (InstanceNotFoundError if none)."""
        cached = self._instances.get((instance_id,))
        if cached is not None:
            return cached
        scoped = [(k, v) for k, v in metadata if k not in (TENANT_METADATA_KEY, ADMIN_SCOPE_METADATA_KEY)]
        scoped += [(TENANT_METADATA_KEY, self._operator_tenant), (ADMIN_SCOPE_METADATA_KEY, "all")]
        reply = await self._shared.call(
            _DESCRIBE_INSTANCE,
            admin_pb2.DescribeInstanceRequest(instance_id=instance_id),
            admin_pb2.DescribeInstanceResponse,
            metadata=scoped,
            timeout=self._timeout,
            idempotent=True,
        )
        self._instances.put((instance_id,), reply.instance)
        return reply.instance
