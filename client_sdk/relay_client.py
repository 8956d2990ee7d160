"""`RelayClient`: accounts, the public-key directory and the mailbox of a keyrelay relay
(`keyrelay.v1.RelayService` and `keyrelay.v1.DirectoryService`, on one channel).

    from client_sdk import RelayClient

    with RelayClient("relay.example:7300", credentials=CredentialBundle(ca_pem)) as relay:
        account = relay.create_account("alice")      # keep account.device_token, encrypted at rest
        relay.publish_record(sealed, kms_key_id)       # sealed by KmsClient.seal_public_key
        relay.send("bob", envelope)                    # retried safely until durably stored
        for message in relay.messages():               # reconnects when the relay restarts
            if message.message_id in seen:             # unacknowledged messages come again
                continue
            handle(message)
            relay.ack([message.message_id])

The relay authenticates calls by the device token that `create_account` returns (sent as call
metadata `authorization: Bearer <token>`), not by a client certificate: `credentials` normally
carries only the CA that signs the relay's certificate. Give a token saved earlier with
`RelayClient(target, device_token=...)`. The token never appears in `repr` or in error messages.

Every method takes `timeout` (seconds; default the client's) and raises the keyrelay exception
the relay raised (`client_sdk.UserNotFoundError`, `client_sdk.MailboxFullError`, ...), never a
bare `grpc.RpcError`. Arguments the relay would refuse are refused locally, before any call.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from typing import Callable, Iterator, Self, Sequence, TypeVar

import grpc

from client_sdk._channel import ServiceClient, error_from_rpc, optional_datetime, to_datetime
from client_sdk.credentials import CredentialBundle, Profile, ProfileError, load_profile
from client_sdk.relay_types import DirectoryRecord, RelayAccount, RelayMessage, SendReceipt
from client_sdk.types import SealedPublicKey
from foundation.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    KeyrelayError,
    TlsRefusedError,
    UnauthenticatedError,
    UnavailableError,
)
from foundation.messaging_ids import MAX_ACK_IDS, check_client_message_id, check_envelope, check_user_id
from keyrelay.v1 import directory_pb2, directory_pb2_grpc, kms_pb2, relay_pb2, relay_pb2_grpc

#: Call-metadata key carrying the device token (`Bearer <token>`).
AUTHORIZATION_METADATA_KEY = "authorization"

_NO_TOKEN = "no device token: call create_account first or pass device_token="
_REDACTED = "<device token>"
# Backoff of retried unary calls (Send, Ack) and of Subscribe reconnects, in seconds.
_RETRY_FIRST, _RETRY_MAX = 0.05, 1.0
_RECONNECT_FIRST, _RECONNECT_MAX = 0.1, 2.0

_T = TypeVar("_T")


def _jittered(delay: float) -> float:
    """`delay` less a random part of up to half of it, so that clients do not retry in step."""
    return delay * random.uniform(0.5, 1.0)


def _sealed(s: kms_pb2.SealedPublicKey) -> SealedPublicKey:
    return SealedPublicKey(s.user_id, s.bundle_version, s.sealed_bundle, s.wrapped_dek)


def _record(r: directory_pb2.DirectoryRecord) -> DirectoryRecord:
    return DirectoryRecord(
        user_id=r.user_id,
        record_version=r.record_version,
        sealed=_sealed(r.sealed),
        kms_key_id=r.kms_key_id,
        publish_time=optional_datetime(r, "publish_time"),
    )


def _message(m: relay_pb2.RelayMessage) -> RelayMessage:
    return RelayMessage(
        message_id=m.message_id,
        sender_user_id=m.sender_user_id,
        recipient_user_id=m.recipient_user_id,
        envelope=m.envelope,
        client_message_id=m.client_message_id,
        store_time=to_datetime(m.store_time),
        expire_time=optional_datetime(m, "expire_time"),
    )


def _check_token(token: str) -> str:
    # A gRPC metadata value must be printable ASCII; the message never shows the token.
    if not isinstance(token, str):
        raise TypeError(f"device_token must be a str, not {type(token).__name__}")
    if not token or not all("\x21" <= c <= "\x7e" for c in token):
        raise ValueError("device_token must be the non-empty printable-ASCII token that create_account returned")
    return token


class Subscription:
    """A live Subscribe stream: iterate it for RelayMessage; cancel() (or leave the with-block) ends it.

    The stream first delivers every pending (stored, unacknowledged) message in store order, then
    new ones as they arrive, and never ends on its own. A failure of the stream raises its keyrelay
    exception (`UnavailableError` when the relay restarts); `cancel()`, which may be called from
    another thread to unblock a waiting iteration, ends it quietly (StopIteration).
    """

    def __init__(self, call, map_error: Callable[[grpc.RpcError], KeyrelayError] = error_from_rpc) -> None:
        """Wrap `call`, the iterator-and-`grpc.Call` that a unary-stream stub method returns."""
        self._call = call
        self._map_error = map_error
        self._cancelled = False
        self._done = False

    @property
    def cancelled(self) -> bool:
        """Whether `cancel()` was called."""
        return self._cancelled

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> RelayMessage:
        if self._cancelled or self._done:
            raise StopIteration
        try:
            response = next(self._call)
        except StopIteration:
            self._done = True
            raise
        except grpc.RpcError as exc:
            self._done = True
            if self._cancelled:  # our own cancel(), from another thread
                raise StopIteration from None
            raise self._map_error(exc) from None
        return _message(response.message)

    def cancel(self) -> None:
        """End the stream (idempotent); a blocked or later iteration stops quietly."""
        self._cancelled = True
        self._call.cancel()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.cancel()


class RelayClient(ServiceClient):
    """Accounts, directory and mailbox of a keyrelay relay.

    Args:
        target: host:port of the relay. Without `target` and `channel`, the endpoint (and the
            CA) come from the `[relay]` section of `profile` (default: the default profile).
        device_token: the token of an existing account (from an earlier `create_account`);
            without one, only `create_account` works until it has been called.
        credentials: the TLS credential; normally only `ca_cert` (the CA of the relay's
            certificate), since the relay authenticates by device token. None: plain text.
        timeout: default per-call deadline in seconds (default 10). Each attempt of a retried
            call gets the whole deadline.
        channel: an existing channel to use instead of opening one to `target`.
        retry_seconds: how long `send` and `ack` keep retrying a call that failed with
            `UnavailableError` or `DeadlineExceededError`, from the first attempt (0: no retry).

    Raises:
        ValueError: neither `target` nor `channel` was given, or `retry_seconds` is negative.
    """

    _stub_class = relay_pb2_grpc.RelayServiceStub

    def __init__(
        self,
        target: str | None = None,
        *,
        device_token: str | None = None,
        credentials: CredentialBundle | None = None,
        timeout: float | None = None,
        channel: grpc.Channel | None = None,
        retry_seconds: float = 30.0,
        profile: str | os.PathLike | Profile | None = None,
    ) -> None:
        if not target and channel is None:
            # The relay's endpoint and CA from the profile's [relay] section (the default profile
            # when none is named); its KMS credential is not used here.
            profile = profile if isinstance(profile, Profile) else load_profile(profile)
            if not profile.relay_endpoint:
                raise ProfileError(
                    f"the profile {profile.path} has no [relay] section: add endpoint = \"HOST:PORT\" under [relay], "
                    "or pass target="
                )
            target = profile.relay_endpoint
            credentials = credentials or profile.relay_credentials
            timeout = timeout if timeout is not None else profile.timeout
        if retry_seconds < 0:
            raise ValueError(f"retry_seconds must be 0 or more, not {retry_seconds!r}")
        self._token: str | None = None
        self._user_id: str | None = None
        self._retry_seconds = float(retry_seconds)
        if device_token is not None:
            self._token = _check_token(device_token)
        super().__init__(target, timeout=timeout, channel=channel, credentials=credentials, profile=None)
        self._directory_stub = directory_pb2_grpc.DirectoryServiceStub(self._channel)

    @classmethod
    def from_profile(cls, path: str | os.PathLike | None = None, *, device_token: str | None = None) -> Self:
        """A client for the relay named in the profile's [relay] section (default: the default profile)."""
        return cls(profile=load_profile(path), device_token=device_token)

    def __repr__(self) -> str:
        token = "<set>" if self._token else None
        return f"RelayClient(endpoint={self._endpoint!r}, user_id={self._user_id!r}, device_token={token})"

    @property
    def device_token(self) -> str | None:
        """The device token sent with authenticated calls (None: not set). Secret.

        Setting a different token clears `user_id` (the client no longer knows whose it is);
        setting None or '' removes it.
        """
        return self._token

    @device_token.setter
    def device_token(self, token: str | None) -> None:
        token = _check_token(token) if token else None
        if token != self._token:
            self._user_id = None
        self._token = token

    @property
    def user_id(self) -> str | None:
        """The account's user id, once `create_account` has succeeded on this client (else None)."""
        return self._user_id

    # -- calls ------------------------------------------------------------------------------

    def _metadata(self) -> list[tuple[str, str]]:
        if not self._token:
            raise UnauthenticatedError(_NO_TOKEN)
        metadata = super()._metadata()
        metadata.append((AUTHORIZATION_METADATA_KEY, f"Bearer {self._token}"))
        return metadata

    def _redacted(self, err: KeyrelayError) -> KeyrelayError:
        """`err`, its message rid of the device token should a server have echoed it."""
        if self._token and self._token in err.message:
            err.message = err.message.replace(self._token, _REDACTED)
            err.args = (err.message,)
        return err

    def _map_error(self, exc: grpc.RpcError) -> KeyrelayError:
        return self._redacted(self._error(exc))

    def _rpc(self, stub, method: str, request, timeout: float | None, *, authenticated: bool = True):
        metadata = self._metadata() if authenticated else super()._metadata()
        try:
            return self._call(method, request, timeout, stub=stub, metadata=metadata)
        except KeyrelayError as err:
            raise self._redacted(err) from None

    def _retrying(self, attempt: Callable[[], _T]) -> _T:
        """`attempt()`, retried on UnavailableError / DeadlineExceededError with exponential
        backoff and jitter until `retry_seconds` have passed since the first attempt; a connection
        that TLS refused (`TlsRefusedError`) is not retried."""
        start = time.monotonic()
        delay = _RETRY_FIRST
        while True:
            try:
                return attempt()
            except TlsRefusedError:
                raise
            except (UnavailableError, DeadlineExceededError):
                remaining = self._retry_seconds - (time.monotonic() - start)
                if remaining <= 0:
                    raise
                time.sleep(min(_jittered(delay), remaining))
                delay = min(delay * 2, _RETRY_MAX)

    # -- accounts ---------------------------------------------------------------------------

    def create_account(self, user_id: str, *, timeout: float | None = None) -> RelayAccount:
        """Claim `user_id` (1-64 characters of a-z, 0-9, '.', '_', '-') and return its device token.

        On success the client uses the new token for its later calls and sets `user_id`. The relay
        returns the token only this once: store it (encrypted at rest) to use it again.

        Raises:
            InvalidUserIdError: `user_id` is not valid (checked before any call).
            AccountExistsError: the user id is taken.
        """
        check_user_id(user_id)
        request = relay_pb2.CreateAccountRequest(user_id=user_id)
        response = self._rpc(self._stub, "CreateAccount", request, timeout, authenticated=False)
        self._token = _check_token(response.device_token)
        self._user_id = response.user_id
        return RelayAccount(
            response.user_id, response.device_token, optional_datetime(response, "device_token_expire_time")
        )

    def rotate_device_token(self, *, revoke_previous: bool = False, timeout: float | None = None) -> RelayAccount:
        """Replace this client's device token with a new one, which later calls use.

        The old token keeps working for the relay's grace period (an hour by default), so other
        processes of the device holding it are not cut off, unless `revoke_previous` is set (for
        a token that may have leaked); any other token of the account is revoked. Store the new
        token before the old one's grace period ends. Not retried by itself: should the answer be
        lost, rotate again with the old token (which revokes the token whose answer was lost).

        Raises:
            DeviceTokenExpiredError / DeviceTokenRevokedError: the current token no longer works.
            ResourceExhaustedError: the account rotated too often (the relay's tokens.rotations_per_hour).
        """
        request = relay_pb2.RotateDeviceTokenRequest(revoke_previous=revoke_previous)
        response = self._rpc(self._stub, "RotateDeviceToken", request, timeout)
        self._token = _check_token(response.device_token)
        return RelayAccount(
            self._user_id or "", response.device_token, optional_datetime(response, "device_token_expire_time"),
            optional_datetime(response, "previous_token_expire_time"),
        )

    def revoke_device_token(self, *, all_tokens: bool = False, timeout: float | None = None) -> int:
        """Revoke this client's device token (the device signs out) or, with `all_tokens`, every
        token of the account; returns how many were revoked. The client then has no token: only
        one the relay operator issues (`keyrelay relay --issue-token USER`) opens the account
        again once all are revoked."""
        request = relay_pb2.RevokeDeviceTokenRequest(all=all_tokens)
        response = self._rpc(self._stub, "RevokeDeviceToken", request, timeout)
        self._token = None
        return response.revoked_count

    # -- directory --------------------------------------------------------------------------

    def publish_record(
        self,
        sealed: SealedPublicKey,
        kms_key_id: str,
        *,
        record_version: int | None = None,
        timeout: float | None = None,
    ) -> DirectoryRecord:
        """Publish a new version of the caller's own sealed public-key record.

        `sealed` comes from `KmsClient.seal_public_key`; `kms_key_id` names the KMS key that
        wrapped its DEK (readers open the record with it). The record is `sealed.user_id`'s, and
        `record_version` defaults to `sealed.bundle_version` (the relay requires them equal).

        Raises:
            InvalidUserIdError, InvalidArgumentError: bad user id, empty `kms_key_id`, or a
                record version below 1 (checked before any call).
            PermissionDeniedError: the record is for another user than the caller.
            RecordVersionNotNewerError: the version is not above the newest published one.
        """
        if not isinstance(sealed, SealedPublicKey):
            raise TypeError(f"sealed must be a SealedPublicKey, not {type(sealed).__name__}")
        check_user_id(sealed.user_id, "sealed.user_id")
        if not kms_key_id:
            raise InvalidArgumentError("kms_key_id is empty: name the KMS key that sealed the record")
        version = sealed.bundle_version if record_version is None else record_version
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise InvalidArgumentError(f"record_version must be an integer of at least 1, not {version!r}")
        record = directory_pb2.DirectoryRecord(
            user_id=sealed.user_id,
            record_version=version,
            sealed=kms_pb2.SealedPublicKey(
                user_id=sealed.user_id,
                bundle_version=sealed.bundle_version,
                sealed_bundle=sealed.sealed_bundle,
                wrapped_dek=sealed.wrapped_dek,
            ),
            kms_key_id=kms_key_id,
        )
        request = directory_pb2.PublishRecordRequest(record=record)
        return _record(self._rpc(self._directory_stub, "PublishRecord", request, timeout).record)

    def get_record(self, user_id: str, record_version: int = 0, *, timeout: float | None = None) -> DirectoryRecord:
        """A user's newest published record, or version `record_version` (0: the newest).

        Raises:
            InvalidUserIdError: `user_id` is not valid (checked before any call).
            UserNotFoundError: no such user, no record, or no such version.
        """
        check_user_id(user_id)
        if isinstance(record_version, bool) or not isinstance(record_version, int) or record_version < 0:
            raise InvalidArgumentError(f"record_version must be an integer of 0 or more, not {record_version!r}")
        request = directory_pb2.GetRecordRequest(user_id=user_id, record_version=record_version)
        return _record(self._rpc(self._directory_stub, "GetRecord", request, timeout).record)

    # -- mailbox ----------------------------------------------------------------------------

    def send(
        self,
        recipient_user_id: str,
        envelope: bytes,
        *,
        client_message_id: str | None = None,
        timeout: float | None = None,
    ) -> SendReceipt:
        """Store `envelope` (1 byte to 256 KiB) in the recipient's mailbox; returns once it is durable.

        `client_message_id` (default: a random UUID) is the idempotency key: the relay stores a
        (sender, client_message_id) pair only once. So a call that fails with `UnavailableError`
        or `DeadlineExceededError` is retried with the same id, with backoff, for up to
        `retry_seconds`; then the last error is raised. A receipt with `duplicate` true means an
        earlier call or attempt had stored it. Other errors are raised at once.

        Raises:
            InvalidUserIdError, EnvelopeTooLargeError, InvalidArgumentError: a bad recipient id,
                an envelope over 256 KiB, an empty envelope or a bad client_message_id (checked
                before any call).
            UnauthenticatedError: no device token is set, or the relay refused it.
            UserNotFoundError: no such recipient.
            MailboxFullError: the recipient's mailbox is full.
        """
        check_user_id(recipient_user_id, "recipient user id")
        if not isinstance(envelope, (bytes, bytearray, memoryview)):
            raise TypeError(f"envelope must be bytes, not {type(envelope).__name__}")
        envelope = check_envelope(bytes(envelope))
        if client_message_id is None:
            client_message_id = uuid.uuid4().hex
        check_client_message_id(client_message_id)
        if not self._token:
            raise UnauthenticatedError(_NO_TOKEN)
        request = relay_pb2.SendRequest(
            recipient_user_id=recipient_user_id, envelope=envelope, client_message_id=client_message_id
        )
        response = self._retrying(lambda: self._rpc(self._stub, "Send", request, timeout))
        return SendReceipt(
            message_id=response.message_id,
            client_message_id=client_message_id,
            store_time=to_datetime(response.store_time),
            duplicate=response.duplicate,
        )

    def subscribe(self, *, timeout: float | None = None) -> Subscription:
        """Open a Subscribe stream of the caller's mailbox: pending messages first, then new ones.

        `timeout` bounds the whole stream (None: no deadline). Unacknowledged messages are
        delivered again on the next subscription, so drop duplicates by `message_id`. Prefer
        `messages()`, which also reconnects when the relay restarts.

        Raises:
            UnauthenticatedError: no device token is set (the relay's refusal comes when iterating).
        """
        metadata = self._metadata()
        try:
            call = self._stub.Subscribe(relay_pb2.SubscribeRequest(), timeout=timeout, metadata=metadata)
        except grpc.RpcError as exc:
            raise self._map_error(exc) from None
        return Subscription(call, self._map_error)

    def messages(self, *, reconnect: bool = True) -> Iterator[RelayMessage]:
        """Every message of the caller's mailbox as it arrives, for as long as you iterate.

        Yields from `subscribe()`. When the stream fails with `UnavailableError` (the relay is
        restarting), or ends, it subscribes again after a backoff (0.1 s doubling to 2 s, reset
        by each message), forever; with `reconnect=False` the error is raised (or iteration ends)
        instead. Other errors (e.g. `UnauthenticatedError`, or `TlsRefusedError` when TLS refused
        the connection) are raised. Closing the generator (`close()`, `break` in a for loop, or
        garbage collection) cancels the live stream.

        A reconnect delivers every unacknowledged message again, so a message may repeat:
        receivers must drop duplicates by `message_id`, and `ack` what they have processed.
        """
        delay = _RECONNECT_FIRST
        while True:
            subscription = None
            try:
                subscription = self.subscribe()
                for message in subscription:
                    delay = _RECONNECT_FIRST
                    yield message
                if not reconnect:
                    return
            except TlsRefusedError:
                raise
            except UnavailableError:
                if not reconnect:
                    raise
            finally:
                if subscription is not None:
                    subscription.cancel()
            time.sleep(_jittered(delay))
            delay = min(delay * 2, _RECONNECT_MAX)

    def ack(self, message_ids: Sequence[str], *, timeout: float | None = None) -> int:
        """Acknowledge processed messages (the relay deletes them); returns how many were deleted.

        Ids that are unknown, already deleted or not the caller's are ignored, so acknowledging is
        idempotent: a call failing with `UnavailableError` or `DeadlineExceededError` is retried
        like `send`. An empty list makes no call and returns 0; more than 1000 ids are sent in
        several calls (if one fails, the earlier ones have taken effect).

        Raises:
            UnauthenticatedError: no device token is set, or the relay refused it.
        """
        if isinstance(message_ids, (str, bytes)):
            raise TypeError("message_ids must be a sequence of message ids, not a single id")
        ids = list(message_ids)
        if not ids:
            return 0
        if not self._token:
            raise UnauthenticatedError(_NO_TOKEN)
        deleted = 0
        for start in range(0, len(ids), MAX_ACK_IDS):
            request = relay_pb2.AckRequest(message_ids=ids[start : start + MAX_ACK_IDS])
            deleted += self._retrying(lambda r=request: self._rpc(self._stub, "Ack", r, timeout)).deleted_count
        return deleted
