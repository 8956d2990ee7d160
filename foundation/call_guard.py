"""The envelope of every KMS request at an entry point (a gateway listener, a private endpoint).

`CallGuard.serve` runs one call: the client certificate becomes its access point
(`CredentialVerifier`), the tenant's rate limit is charged (one token per item of a batch, refused
calls included), the authorization module decides on the call (`access_policy.check_call`), the
handler runs, and one hash-chained audit record is written whatever the outcome. `resolve_refs` resolves the keys a
request names, a bounded number at a time, and checks each against the caller's key patterns.
The gateway and the private endpoints differ only in how they resolve a key and where they send
the call, so neither keeps an authorization rule of its own.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Mapping, Protocol

from foundation import access_policy as policy
from foundation.audit import AuditLog, utc_now
from foundation.credential_check import CredentialVerifier
from foundation.errors import (
    quote,
    BatchTooLargeError,
    InvalidArgumentError,
    KeyrelayError,
    ResourceExhaustedError,
)
from foundation.key_refs import BATCH_METHODS, KeyRef, RefKind, check_alias, check_ref
from foundation.logsetup import request_id_var
from foundation.metrics import route_var
from foundation.ratelimit import TokenBucketLimiter
from foundation.tls import peer_certificate, peer_ip
from foundation.wire import (
    ACCESS_POINT_METADATA_KEY,
    MAX_BATCH_ITEMS,
    MAX_BATCH_KEYS,
    REQUEST_ID_METADATA_KEY,
    TENANT_METADATA_KEY,
)

log = logging.getLogger(__name__)

#: Distinct keys of one request resolved at the same time.
RESOLVE_CONCURRENCY = 16


class KeyView(Protocol):
    """What the policy reads of a resolved key."""

    key_id: str
    aliases: tuple[str, ...]


@dataclass
class Call:
    """One request as an entry point sees it: who, from where, and what it touched."""

    method: str
    entry: policy.Entry
    request_id: str
    started: float
    deadline: float | None
    principal: policy.Principal | None = None
    key_ids: list[str] = field(default_factory=list)
    key_version: int = 0
    routes: list[str] = field(default_factory=list)
    denied_by: str = ""

    @property
    def tenant(self) -> str:
        return self.principal.tenant_id if self.principal else ""

    def metadata(self) -> list[tuple[str, str]]:
        """Metadata for an upstream call made on behalf of this request: its request id and tenant."""
        metadata = [(REQUEST_ID_METADATA_KEY, self.request_id)]
        if self.principal is not None:
            metadata.append((TENANT_METADATA_KEY, self.principal.tenant_id))
        return metadata

    def admin_metadata(self) -> list[tuple[str, str]]:
        """Metadata for an AdminService call forwarded for this request: also the access point,
        which the shared KMS authorizes the call against."""
        metadata = self.metadata()
        if self.principal is not None:
            metadata.append((ACCESS_POINT_METADATA_KEY, self.principal.access_point_id))
        return metadata

    def remaining(self, default: float) -> float:
        """Seconds left of the caller's deadline (or `default` when it set none)."""
        if self.deadline is None:
            return default
        return max(0.0, self.deadline - time.monotonic())

    def note_version(self, response: Any) -> None:
        """Remember the key version a response names (for the audit record)."""
        version = getattr(response, "key_version", 0) or getattr(response, "new_version", 0)
        if version:
            self.key_version = version

    def enforce(self, denial: policy.Denial | None) -> None:
        """Raise a denial's error, remembering which rule refused (for the audit record)."""
        if denial is not None:
            self.denied_by = denial.rule
            raise denial.error


class Resolved:
    """The keys of one request's references, or the error each reference gets."""

    def __init__(self, outcome: dict[str, KeyView | KeyrelayError]) -> None:
        self._outcome = outcome
        #: Reference -> the key id it resolved to, for `key_refs.with_key_ids`.
        self.key_ids = {ref: key.key_id for ref, key in outcome.items() if not isinstance(key, KeyrelayError)}

    def of(self, ref: KeyRef) -> KeyView | KeyrelayError:
        """The key `ref` names, or its error (a malformed blob's own, an unknown key, a key not covered)."""
        if ref.error is not None:
            return ref.error
        return self._outcome[ref.ref]

    def require(self, refs: Iterable[KeyRef]) -> list[KeyView]:
        """The keys of every resolving reference, in order; raises the first error."""
        keys = []
        for ref in refs:
            if ref.resolves:
                found = self.of(ref)
                if isinstance(found, KeyrelayError):
                    raise found
                keys.append(found)
        return keys


def batch_cost(method: str, request: Any) -> int:
    """The rate-limit tokens a call costs: one per item of a batch, else one. Refuses an empty or
    oversized batch before anything is charged."""
    if method not in BATCH_METHODS:
        return 1
    count = len(request.items)
    if count == 0:
        raise InvalidArgumentError(f"the batch is empty; send 1 to {MAX_BATCH_ITEMS} items")
    if count > MAX_BATCH_ITEMS:
        raise BatchTooLargeError(
            f"the batch has {count} items; at most {MAX_BATCH_ITEMS} are allowed per call: split it"
        )
    return count


class CallGuard:
    """Authentication, authorization, rate limit and audit for one entry point.

    Args:
        verifier: turns client certificates into access points.
        limiter: per-tenant token buckets.
        audit: the hash-chained audit log the entry point writes.
        zone_cidrs: client ranges that put a request in a zone whatever listener it used.
        instance_id: the dedicated instance a private endpoint serves ("" at the gateway).
        instance_tenant: coroutine function giving the tenant that owns `instance_id`.
        route: the audit `route` of a call that named none (e.g. "local" at a private endpoint).
    """

    def __init__(
        self,
        *,
        verifier: CredentialVerifier,
        limiter: TokenBucketLimiter,
        audit: AuditLog,
        zone_cidrs: Mapping[str, tuple[str, ...]] | None = None,
        instance_id: str = "",
        instance_tenant: Callable[[Call], Awaitable[str]] | None = None,
        route: str = "none",
    ) -> None:
        self.verifier = verifier
        self.limiter = limiter
        self.audit = audit
        self._zone_cidrs = dict(zone_cidrs or {})
        self._instance_id = instance_id
        self._instance_tenant = instance_tenant
        self._route = route

    async def refuse(self, zone: str, method: str, context, error: KeyrelayError) -> None:
        """Answer a request refused before it could be served (its body does not parse, its method
        does not exist) with `error`: the caller is still authenticated and charged one request,
        and the call audited like any other. Always raises."""

        async def answer(call: Call, request: Any) -> Any:
            raise error

        await self.serve(zone, method, None, context, answer, decoded=False)
        raise error  # unreachable: `answer` raised

    async def serve(
        self,
        zone: str,
        method: str,
        request: Any,
        context,
        handler: Callable[[Call, Any], Awaitable[Any]],
        *,
        decoded: bool = True,
    ) -> Any:
        """Authenticate and authorize the caller, charge its rate limit, run `handler`, audit.
        A request refused before it was decoded (`decoded` false, `request` None) costs one
        request and is authorized as far as its method allows (every check for a method the
        policy knows, the network and instance-owner checks for any other) before `handler`
        answers the refusal."""
        remaining = context.time_remaining()
        address = peer_ip(context)
        now = time.monotonic()
        call = Call(
            method=method,
            entry=policy.Entry(policy.zone_for(zone, address, self._zone_cidrs) if self._zone_cidrs else zone, address),
            request_id=request_id_var.get(),
            started=now,
            deadline=None if remaining is None else now + remaining,
        )
        status, reason = "OK", ""
        try:
            call.principal = await self.verifier.principal(
                peer_certificate(context), [(REQUEST_ID_METADATA_KEY, call.request_id)]
            )
            # Charged before the checks: a refused call costs its tenant as much as an allowed one.
            self.charge(call, batch_cost(method, request) if decoded else 1)
            if self._instance_id:
                call.entry = policy.Entry(call.entry.zone, address, self._instance_id, await self._instance_tenant(call))
            if decoded or method in policy.RULES:
                call.enforce(policy.check_call(call.principal, call.entry, method))
            else:
                call.enforce(policy.check_entry(call.principal, call.entry))
            return await handler(call, request)
        except KeyrelayError as exc:
            status, reason = exc.code.name, exc.reason
            raise
        except asyncio.CancelledError:
            status, reason = "CANCELLED", ""
            raise
        except Exception:
            status, reason = "INTERNAL", "INTERNAL"
            raise
        finally:
            route = ",".join(dict.fromkeys(call.routes)) or self._route
            route_var.set(route)
            self._audit(call, route, status, reason)

    def charge(self, call: Call, cost: int) -> None:
        """Spend `cost` tokens of the caller's tenant, or refuse with RESOURCE_EXHAUSTED."""
        if self.limiter.unlimited:
            return
        if cost > self.limiter.burst:
            raise ResourceExhaustedError(
                f"this call costs {cost} requests of tenant {quote(call.tenant)}'s rate limit, more than its burst of "
                f"{self.limiter.burst}: split it into smaller batches"
            )
        wait = self.limiter.try_acquire(call.tenant, cost)
        if wait > 0:
            raise ResourceExhaustedError(
                f"tenant {quote(call.tenant)} is over its request rate limit; retry in {wait:.2f} s"
            )

    @staticmethod
    def check_new_names(call: Call, refs: Iterable[KeyRef]) -> None:
        """Refuse a malformed alias the caller creates, and one its key patterns do not cover
        (CreateKey without an alias names "", which takes a pattern covering every key)."""
        for ref in refs:
            if ref.kind is RefKind.NEW_NAME:
                if ref.ref or ref.required:
                    check_alias(ref.ref)
                call.enforce(policy.check_name(call.principal, ref.ref))

    async def resolve_refs(
        self,
        call: Call,
        refs: Iterable[KeyRef],
        resolve: Callable[[Call, str], Awaitable[KeyView]],
    ) -> Resolved:
        """Resolve each distinct key reference (RESOLVE_CONCURRENCY at a time, at most
        MAX_BATCH_KEYS of them, else BatchTooLargeError before any lookup) and check it against
        the caller's key patterns. New names are left to `check_new_names`."""
        principal = call.principal
        outcome: dict[str, KeyView | KeyrelayError] = {}
        pending: dict[str, KeyRef] = {}
        for ref in refs:
            if ref.kind is RefKind.NEW_NAME or ref.error is not None or ref.ref in outcome:
                continue
            try:
                # A malformed reference is refused here: it costs no lookup upstream.
                check_ref(ref.ref, ref.field)
            except InvalidArgumentError as exc:
                outcome[ref.ref] = exc
            else:
                pending.setdefault(ref.ref, ref)
        if len(pending) > MAX_BATCH_KEYS:
            raise BatchTooLargeError(
                f"the batch names {len(pending)} distinct keys; at most {MAX_BATCH_KEYS} are allowed per call: "
                "group items by key into several calls"
            )
        async def one(ref: KeyRef, limit: asyncio.Semaphore | None = None) -> None:
            try:
                if limit is None:
                    key = await resolve(call, ref.ref)
                else:
                    async with limit:
                        key = await resolve(call, ref.ref)
            except KeyrelayError as exc:
                outcome[ref.ref] = exc
                return
            if ref.kind is RefKind.ALIAS:
                denial = policy.check_name(principal, ref.ref)
            else:
                denial = policy.check_key(principal, key.key_id, key.aliases, shown_as=ref.ref)
            if denial is not None:
                call.denied_by = denial.rule
                outcome[ref.ref] = denial.error
            else:
                outcome[ref.ref] = key
                call.key_ids.append(key.key_id)

        if len(pending) == 1:  # the common case: no semaphore, no tasks
            await one(next(iter(pending.values())))
        elif pending:
            limit = asyncio.Semaphore(RESOLVE_CONCURRENCY)
            await asyncio.gather(*(one(ref, limit) for ref in pending.values()))
        return Resolved(outcome)

    def _audit(self, call: Call, route: str, status: str, reason: str) -> None:
        principal = call.principal
        peer: ipaddress.IPv4Address | ipaddress.IPv6Address | None = call.entry.peer
        try:
            self.audit.append(
                {
                    "time": utc_now(),
                    "request_id": call.request_id,
                    "tenant": principal.tenant_id if principal else "",
                    "access_point": principal.access_point_id if principal else "",
                    "credential_serial": principal.credential_serial if principal else "",
                    "zone": call.entry.zone,
                    "peer": str(peer or ""),
                    "operation": call.method,
                    "key_id": ",".join(dict.fromkeys(call.key_ids))[:400],
                    "key_version": call.key_version,
                    "route": route,
                    "status": status,
                    "reason": reason,
                    "denied_by": call.denied_by if status != "OK" else "",
                    "latency_ms": round((time.monotonic() - call.started) * 1000, 3),
                }
            )
        except Exception:  # noqa: BLE001 - a failing audit disk must be loud, but is reported, not hidden
            log.exception("writing the audit record of %s failed", call.method)
            raise
