"""Turning a client certificate into the access point it was issued to.

The shared KMS keeps every access point and credential; the gateway and the private endpoints of
dedicated nodes ask it (`AccessRegistryService.AuthenticateCredential`, over mutual TLS) which
access point a presented certificate belongs to and whether it is still valid. Answers are cached
for a few seconds (`ttl`), which bounds how long a revoked credential keeps working; failures are
not cached, so a new credential works at once.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from datetime import timezone
from typing import Callable, Sequence

from cryptography import x509

from foundation.access_policy import ALL_ROLES, Principal, role_from_enum_name
from foundation.errors import CredentialExpiredError, UnauthenticatedError
from foundation.pki import fingerprint_sha256, serial_hex
from foundation.upstream import ReplicaSet
from keyrelay.v1 import admin_pb2, registry_pb2

_AUTHENTICATE = "/keyrelay.v1.AccessRegistryService/AuthenticateCredential"
_MAX_ENTRIES = 50_000


#: Enum value -> role, for the four roles (the `admin` shorthand never comes back from the KMS).
_ROLE_NAMES = {
    value: role for name, value in admin_pb2.AccessPointRole.items() if (role := role_from_enum_name(name)) in ALL_ROLES
}


def _role_names(values) -> frozenset[str]:
    return frozenset(_ROLE_NAMES[v] for v in values if v in _ROLE_NAMES)


def principal_from(access_point: admin_pb2.AccessPoint, serial: str) -> Principal:
    """The `Principal` of an access point, as a credential with `serial` presents it."""
    return Principal(
        tenant_id=access_point.tenant_id,
        access_point_id=access_point.access_point_id,
        name=access_point.name,
        roles=_role_names(access_point.roles),
        key_patterns=tuple(access_point.key_patterns),
        allowed_zones=tuple(access_point.allowed_zones),
        allowed_cidrs=tuple(access_point.allowed_cidrs),
        operator=access_point.operator,
        credential_serial=serial,
    )


class CredentialVerifier:
    """Authenticates client certificates against the shared KMS, with a short-lived cache.

    Args:
        registry: the shared KMS replicas (internal port).
        ttl: seconds an answer is trusted; 0 asks on every request.
        metadata: extra call metadata (e.g. the request id is added per call).
    """

    def __init__(
        self,
        registry: ReplicaSet,
        *,
        ttl: float = 5.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._ttl = ttl
        self._timeout = timeout
        self._clock = clock
        self._cache: OrderedDict[tuple[str, str], tuple[float, Principal, float]] = OrderedDict()

    async def principal(self, certificate: x509.Certificate | None, metadata: Sequence[tuple[str, str]] = ()) -> Principal:
        """The access point behind `certificate`, or UnauthenticatedError (or a subclass)."""
        if certificate is None:
            raise UnauthenticatedError(
                "no client certificate was presented: connect with an access-point credential "
                "(keyrelay credential issue) over TLS"
            )
        now_wall = time.time()
        if certificate.not_valid_after_utc.timestamp() <= now_wall:
            raise CredentialExpiredError(
                f"the client certificate (serial {serial_hex(certificate)}) expired on "
                f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; issue a new credential"
            )
        key = (serial_hex(certificate), fingerprint_sha256(certificate))
        cached = self._cache.get(key)
        now = self._clock()
        if cached is not None and cached[0] > now and cached[2] > now_wall:
            self._cache.move_to_end(key)
            return cached[1]
        reply = await self._registry.call(
            _AUTHENTICATE,
            registry_pb2.AuthenticateCredentialRequest(serial=key[0], fingerprint_sha256=key[1]),
            registry_pb2.AuthenticateCredentialResponse,
            metadata=metadata,
            timeout=self._timeout,
            idempotent=True,
        )
        principal = principal_from(reply.access_point, key[0])
        if self._ttl > 0:
            not_after = reply.credential.not_after.ToDatetime(tzinfo=timezone.utc).timestamp()
            self._cache[key] = (now + self._ttl, principal, not_after)
            if len(self._cache) > _MAX_ENTRIES:
                self._cache.popitem(last=False)
        return principal

    def forget(self, serial: str | None = None) -> None:
        """Drop cached answers (for one serial, or all), e.g. after revoking through this process."""
        for key in [k for k in self._cache if serial is None or k[0] == serial]:
            del self._cache[key]
