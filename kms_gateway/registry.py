"""The shared KMS's registry as the gateway uses it: where keys live, who owns an instance, and the
reservation protocol of dedicated keys. The one module of the gateway that speaks the internal
registry protocol; everything it returns is a small dataclass.

The gateway resolves every key reference it routes with `KeyRegistryService.ResolveKey`, and every
dedicated instance with `AccessRegistryService.ResolveInstance`. Answers are cached for `ttl`
seconds; a change this gateway makes to a key drops that key's entries at once (`invalidate`), so
it never routes on a state it knows is stale. A reference that does not exist is remembered for
`negative_ttl` seconds, so a flood of lookups of made-up keys reaches the shared KMS once per
key; creating a key or an alias here forgets the tenant's negative answers at once.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Sequence

from foundation import access_policy as policy
from foundation.errors import AliasNotFoundError, KeyNotFoundError
from foundation.upstream import ReplicaSet
from keyrelay.v1 import kms_pb2, registry_pb2

_REGISTRY = "/keyrelay.v1.KeyRegistryService/"
_RESOLVE_INSTANCE = "/keyrelay.v1.AccessRegistryService/ResolveInstance"
_MAX_ENTRIES = 100_000
#: Made-up references are cheap to send: fewer of them are remembered.
_MAX_MISSING = 20_000
#: State names of the registry, as the protos spell them without their prefix.
STATE_NAMES = {value: name.removeprefix("KEY_STATE_") for name, value in kms_pb2.KeyState.items()}


@dataclass(frozen=True, slots=True)
class KeyRoute:
    """A registry record: enough to authorize and route requests for one key."""

    key_id: str
    tenant_id: str
    instance_id: str
    state: str
    aliases: tuple[str, ...]

    @property
    def creating(self) -> bool:
        return self.state == "CREATING"


@dataclass(frozen=True, slots=True)
class InstanceRoute:
    """A registered dedicated instance: its owner, its node replicas and its policy."""

    instance_id: str
    tenant_id: str
    node_endpoints: tuple[str, ...]
    policy: policy.InstancePolicy


def _key_route(record: registry_pb2.KeyRecord) -> KeyRoute:
    return KeyRoute(
        key_id=record.key_id,
        tenant_id=record.tenant_id,
        instance_id=record.instance_id,
        state=STATE_NAMES.get(record.state, "UNSPECIFIED"),
        aliases=tuple(record.aliases),
    )


def _instance_route(instance) -> InstanceRoute:
    return InstanceRoute(
        instance_id=instance.instance_id,
        tenant_id=instance.tenant_id,
        node_endpoints=tuple(instance.node_endpoints),
        policy=policy.InstancePolicy(
            instance_id=instance.instance_id,
            management_zones=tuple(instance.policy.management_zones),
            allow_public_crypto=instance.policy.allow_public_crypto,
            private_endpoint=instance.private_endpoint,
        ),
    )


class _TtlCache:
    """A bounded LRU of values that expire `ttl` seconds after they were stored."""

    def __init__(self, ttl: float, clock: Callable[[], float], max_entries: int = _MAX_ENTRIES) -> None:
        self.ttl = ttl
        self._clock = clock
        self._max_entries = max_entries
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
        if len(self._items) > self._max_entries:
            self._items.popitem(last=False)

    def drop(self, predicate: Callable[[tuple, object], bool]) -> None:
        for key in [k for k, (_, v) in self._items.items() if predicate(k, v)]:
            del self._items[key]


class Registry:
    """Key routes and instances from the shared KMS, cached; and the reservation calls.

    Args:
        shared: the shared KMS replicas (internal port).
        ttl: seconds a record or instance is trusted.
        negative_ttl: seconds "no such key" is trusted.
        on_lookup: called with True on a cache hit and False on a miss (metrics).
    """

    def __init__(
        self,
        shared: ReplicaSet,
        *,
        ttl: float,
        negative_ttl: float = 2.0,
        timeout: float = 5.0,
        on_lookup: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._shared = shared
        self._records = _TtlCache(ttl, clock)
        self._missing = _TtlCache(negative_ttl, clock, _MAX_MISSING)
        self._instances = _TtlCache(ttl, clock)
        self._timeout = timeout
        self._on_lookup = on_lookup or (lambda hit: None)

    async def _call(self, path: str, request, response_type, metadata, timeout: float | None, idempotent: bool = True):
        return await self._shared.call(
            path, request, response_type, metadata=metadata, timeout=timeout or self._timeout, idempotent=idempotent
        )

    # -- lookups ----------------------------------------------------------------------------------

    async def resolve(self, tenant_id: str, ref: str, metadata: Sequence[tuple[str, str]]) -> KeyRoute:
        """The route of a key id or alias of `tenant_id` (KeyNotFoundError/AliasNotFoundError if none)."""
        cached = self._records.get((tenant_id, ref))
        self._on_lookup(cached is not None)
        if cached is not None:
            return cached
        missing = self._missing.get((tenant_id, ref))
        if missing is not None:
            raise missing[0](missing[1])
        try:
            reply = await self._call(
                _REGISTRY + "ResolveKey", registry_pb2.ResolveKeyRequest(tenant_id=tenant_id, key_ref=ref),
                registry_pb2.ResolveKeyResponse, metadata, None,
            )
        except (KeyNotFoundError, AliasNotFoundError) as exc:
            self._missing.put((tenant_id, ref), (type(exc), exc.message))
            raise
        route = _key_route(reply.record)
        # A key still being created is not cached: its state is about to change elsewhere.
        if not route.creating:
            self._records.put((tenant_id, ref), route)
            if ref != route.key_id:
                self._records.put((tenant_id, route.key_id), route)
        return route

    def invalidate(self, key_id: str) -> None:
        """Forget every cached reference to `key_id`, by id or alias (after this gateway changed the key)."""
        self._records.drop(lambda _key, route: route.key_id == key_id)

    def created(self, tenant_id: str) -> None:
        """Forget the tenant's "no such key" answers (after this gateway created a key or alias)."""
        self._missing.drop(lambda key, _value: key[0] == tenant_id)

    async def instance(self, instance_id: str, metadata: Sequence[tuple[str, str]]) -> InstanceRoute:
        """A registered dedicated instance (InstanceNotFoundError if none)."""
        cached = self._instances.get((instance_id,))
        if cached is not None:
            return cached
        reply = await self._call(
            _RESOLVE_INSTANCE, registry_pb2.ResolveInstanceRequest(instance_id=instance_id),
            registry_pb2.ResolveInstanceResponse, metadata, None,
        )
        route = _instance_route(reply.instance)
        self._instances.put((instance_id,), route)
        return route

    # -- the reservation protocol of dedicated keys --------------------------------------------

    async def reserve(
        self, tenant_id: str, instance_id: str, alias: str, request_id: str, metadata, timeout: float
    ) -> KeyRoute:
        """Reserve a key id (state CREATING) and its alias on a dedicated instance."""
        reply = await self._call(
            _REGISTRY + "ReserveKey",
            registry_pb2.ReserveKeyRequest(tenant_id=tenant_id, instance_id=instance_id, alias=alias, request_id=request_id),
            registry_pb2.ReserveKeyResponse, metadata, timeout,
        )
        return _key_route(reply.record)

    async def commit(self, key_id: str, metadata, timeout: float) -> None:
        """Mark a reservation ENABLED once the instance made the key."""
        await self._call(
            _REGISTRY + "CommitKey", registry_pb2.CommitKeyRequest(key_id=key_id), registry_pb2.CommitKeyResponse,
            metadata, timeout,
        )

    async def abort(self, key_id: str, metadata, timeout: float) -> None:
        """Remove a reservation the instance certainly did not act on."""
        await self._call(
            _REGISTRY + "AbortKey", registry_pb2.AbortKeyRequest(key_id=key_id), registry_pb2.AbortKeyResponse,
            metadata, timeout,
        )

    async def update(self, key_id: str, state: int, aliases: Sequence[str], metadata, timeout: float) -> None:
        """Mirror a dedicated key's state (a `KeyState` value) and alias set into its record."""
        await self._call(
            _REGISTRY + "UpdateKeyRecord",
            registry_pb2.UpdateKeyRecordRequest(key_id=key_id, state=state, aliases=list(aliases)),
            registry_pb2.UpdateKeyRecordResponse, metadata, timeout,
        )
