"""What every SDK client shares: choosing the endpoint and credential, the channel, call
metadata, and mapping a failed call back to the keyrelay exception the server raised (or to
`TlsRefusedError` when TLS refused the connection)."""

from __future__ import annotations

import os
import uuid
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Self

import grpc

from client_sdk._connectivity import Link
from client_sdk.credentials import DEFAULT_TIMEOUT, CredentialBundle, Profile, ProfileError, load_profile
from foundation.config import ConfigError
from foundation.errors import REASON_METADATA_KEY, REQUEST_ID_METADATA_KEY, KeyrelayError, from_status
from foundation.tls import channel_credentials_from_pem
from foundation.wire import TENANT_METADATA_KEY


def to_datetime(ts) -> datetime:
    """A protobuf Timestamp as an aware UTC datetime."""
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, timezone.utc)


def optional_datetime(message, name: str) -> datetime | None:
    """The Timestamp field `name` of `message` as a datetime, or None when unset."""
    return to_datetime(getattr(message, name)) if message.HasField(name) else None


def status_code(number: int) -> grpc.StatusCode:
    """The grpc.StatusCode with this number (UNKNOWN for numbers grpc does not know)."""
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    return grpc.StatusCode.UNKNOWN


def error_from_rpc(exc: grpc.RpcError) -> KeyrelayError:
    """The keyrelay exception a failed call stands for, by its status and reason. Whether TLS
    refused the connection is not in the status: clients ask their `Link` (see `_connectivity`)."""
    trailers = dict(exc.trailing_metadata() or ())
    details = exc.details() or exc.code().name
    return from_status(exc.code(), details, trailers.get(REASON_METADATA_KEY), trailers.get(REQUEST_ID_METADATA_KEY))


def iterate_pages(list_page: Callable[..., Any], items: str, **kwargs: Any) -> Iterator[Any]:
    """Every item of a paged list: calls `list_page(page_token=..., **kwargs)` until a page's
    `next_page_token` is empty, yielding the page's attribute `items`."""
    token = ""
    while True:
        page = list_page(page_token=token, **kwargs)
        yield from getattr(page, items)
        token = page.next_page_token
        if not token:
            return


class ServiceClient:
    """Base of the SDK clients: one channel to one service, typed calls on top of its stub.

    The endpoint, credential, tenant and timeout come from the arguments, else from `profile`
    (a `Profile` or the path of a profile file); with neither a target nor a channel nor a
    profile, from the default profile (`$KEYRELAY_PROFILE`, else `.keyrelay/profile.toml`).
    `credentials` opens a TLS channel; without any, the channel is plain text.
    """

    _stub_class: type

    def __init__(
        self,
        target: str | None = None,
        *,
        tenant: str | None = None,
        timeout: float | None = None,
        channel: grpc.Channel | None = None,
        credentials: CredentialBundle | None = None,
        profile: str | os.PathLike | Profile | None = None,
    ) -> None:
        if profile is None and not target and channel is None:
            profile = load_profile()
        elif profile is not None and not isinstance(profile, Profile):
            profile = load_profile(profile)
        self._profile: Profile | None = profile
        self._endpoint = target or (profile.endpoint if profile else "")
        self._credentials = credentials or (profile.credentials if profile else None)
        self._tenant = tenant or (profile.tenant if profile else None)
        self._timeout = timeout if timeout is not None else (profile.timeout if profile else DEFAULT_TIMEOUT)
        self._own_channel = channel is None
        if channel is None:
            channel = self._open_channel()
        self._channel = channel
        self._stub = self._stub_class(channel)
        self._link = self._link_for(channel, self._endpoint if self._own_channel else "")

    #: What opens channels: `grpc` for the synchronous clients, `grpc.aio` for the asyncio ones.
    _channels: Any = grpc

    def _open_channel(self, target: str | None = None) -> grpc.Channel:
        """A channel to `target` (default: the client's endpoint) with the client's credential."""
        target = target or self._endpoint
        if self._credentials is None:
            return self._channels.insecure_channel(target)
        bundle = self._credentials
        try:
            credentials = channel_credentials_from_pem(bundle.ca_cert, bundle.client_cert, bundle.client_key)
        except ConfigError as exc:
            raise ProfileError(f"the TLS credential is not usable: {exc}") from None
        return self._channels.secure_channel(target, credentials)

    def _link_for(self, channel, target: str) -> Link:
        """The `Link` of a channel: `target` is what it dials ('' for a channel the caller made,
        which is then never taken for one that TLS refused)."""
        bundle = self._credentials
        return Link(channel, target, secure=bundle is not None, client_certificate=bool(bundle and bundle.client_cert))

    def _error(self, exc: grpc.RpcError, link: Link | None = None) -> KeyrelayError:
        """The keyrelay exception a call that failed on `link` (default: the client's) stands for."""
        link = link or self._link
        return link.refusal(exc) if link.refused(exc) else error_from_rpc(exc)

    @classmethod
    def from_profile(cls, path: str | os.PathLike | None = None) -> Self:
        """A client configured by the profile file at `path` (default: the default profile)."""
        return cls(profile=load_profile(path))

    @property
    def endpoint(self) -> str:
        """host:port this client connects to ('' when it was given only a channel)."""
        return self._endpoint

    @property
    def profile(self) -> Profile | None:
        """The profile the client was configured from, if any."""
        return self._profile

    def close(self) -> None:
        """Close the channel if this client opened it."""
        if self._own_channel:
            self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _metadata(self, request_id: str | None = None) -> list[tuple[str, str]]:
        """Metadata of one call: the request id (a fresh one unless given: retries reuse theirs)
        and the tenant, if any. Subclasses may add to it."""
        metadata = [(REQUEST_ID_METADATA_KEY, request_id or uuid.uuid4().hex)]
        if self._tenant:
            metadata.append((TENANT_METADATA_KEY, self._tenant))
        return metadata

    def _call(self, method: str, request, timeout: float | None, *, stub=None, metadata=None):
        """Call `method` of `stub` (default: the client's stub) with `metadata` (default:
        `self._metadata()`), mapping a failure to its keyrelay exception."""
        if metadata is None:
            metadata = self._metadata()
        try:
            response = getattr(self._stub if stub is None else stub, method)(
                request, timeout=self._timeout if timeout is None else timeout, metadata=metadata
            )
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        self._link.answered()
        return response
