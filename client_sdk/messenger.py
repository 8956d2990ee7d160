"""`Messenger`: end-to-end encrypted messages through a keyrelay relay (DESIGN flows 4-6).

    from client_sdk import KmsClient, Messenger, RelayClient

    kms, relay = KmsClient(profile="alice.toml"), RelayClient(profile="alice.toml")
    alice = Messenger.register(kms, relay, "alice", key_id="alias/directory",
                               device_file="alice.keys", passphrase=passphrase)
    alice.send("bob", b"hello")
    for message in alice.receive():        # the mailbox until it is drained; follow=True: forever
        print(message.sender, message.plaintext)

    alice = Messenger.open(kms, relay, "alice.keys", passphrase)      # later, or in another process

**Register.** The device makes an HPKE key pair (the hybrid ML-KEM-768+X25519 KEM by default, or
X25519) and an Ed25519 signing key pair, keeps the private keys in its device file (encrypted under
the passphrase, see `client_sdk.device_keys`), has the KMS seal the public bundle
(`SealPublicKey`) and publishes the sealed record in the relay's directory. `reregister()` makes
the key pairs of the next bundle version and publishes them: peers use them from their next
message on, and the old private keys stay on the device for messages already in flight.

**Send.** `send()` asks the directory for the recipient's newest record version (a cheap call) and
opens the record through the KMS (`OpenPublicKey`) unless an opened copy of that very version is
cached (5 minutes by default: a version change drops the cached one at once). It checks that the
record, the sealed record and the bundle inside all name the recipient and the same version, and
that the KMS key that opened it is the one the record names. The message is HPKE-sealed (RFC 9180
base mode, HKDF-SHA256, AES-256-GCM) with `info` binding sender, recipient, message id and both
bundle versions::

    info = "keyrelay.v1.envelope" LF sender LF recipient LF message_id LF sender_version LF recipient_version

(user ids and message ids hold no LF, so the encoding is unambiguous). The `EnvelopeBody` is signed
with Ed25519 over `keyrelay.v1.envelope` + body, and posted with the message id as the relay's
client message id, so retries are stored once.

**Receive.** `receive()` reads the mailbox stream. For each envelope it looks up the relay-
authenticated sender's bundle of the version the body names (that number is the only thing read
from the body before the signature verifies), verifies the signature, checks that the signed body
names that sender and this user, checks its send time and drops repeats by (sender, message id),
and decrypts with the private key of the named bundle version. A genuine message is yielded, and
acknowledged (the relay then deletes it) only once the application has taken it: when the
generator is resumed, or closed, after the yield. A crash before that leaves it in the mailbox, to
come again; the ids of messages taken are kept (and saved, encrypted, beside the device file) to
drop such repeats. An envelope that fails a check is never yielded: it is reported to `on_reject`
as a `RejectedMessage` (without content) and acknowledged, so it cannot block the mailbox.
Failures that are not the envelope's fault (the KMS or relay unavailable, this client's credential
refused) are raised instead, and the message stays in the mailbox.

**Against a hostile relay and hostile senders** (`MessengerPolicy`, its state in
`client_sdk.messenger_state`):

- *Rollback.* The highest record version seen of each peer is kept (beside the device file, so a
  restart keeps it too). `send` refuses a directory whose newest record is older
  (`PeerVersionDowngradeError`), and a signature by an older version is accepted only for
  `superseded_grace_seconds` (24 hours) after this device first saw a newer one
  (`SUPERSEDED_SENDER_VERSION`): the messages that were in flight when the sender rotated.
- *Replay.* An envelope whose signed send time is older than `message_ttl_seconds` (the relay's
  30 days) or further ahead than `clock_skew_seconds` (5 minutes) is refused
  (`ENVELOPE_TOO_OLD`, `ENVELOPE_FROM_FUTURE`); within that window the ids of taken messages are
  kept, up to `seen_limit` (the relay's 10,000 messages a mailbox), so a copy stored again is
  refused as `REPLAYED`. (The same message redelivered under its own relay id, after a lost
  acknowledgement, is dropped quietly.) When the limit forgets a message early, nothing its sender
  sent until then is accepted again (`ENVELOPE_TOO_OLD`).
- *Poison.* Anyone may publish a record that does not open for this user's credential and send
  from it. A record that failed to open is not sent to the KMS again for
  `refusal_cache_seconds` (5 minutes), so one bad sender costs one KMS call; its envelopes are
  reported as `SENDER_KEY_REFUSED`, left in the mailbox at the first delivery (in case the
  refusal was a mistake being mended) and acknowledged at the `refused_deliveries`-th (the 2nd).

Nothing here logs or puts in an exception plaintext, private keys, the passphrase or the token.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import random
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable, Iterator

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError

from client_sdk._channel import to_datetime
from client_sdk.device_keys import (
    DEFAULT_KEM,
    KEMS_BY_ALGORITHM,
    SCRYPT_N,
    DeviceKeyPair,
    DeviceKeys,
    KemSpec,
    TokenLife,
    kem_spec,
)
from client_sdk.messenger_policy import Freshness, MessengerPolicy, Superseded
from client_sdk.messenger_state import MessengerState
from client_sdk.relay_types import DirectoryRecord, RelayAccount, RelayMessage, SendReceipt
from foundation.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    KeyNotFoundError,
    KeyrelayError,
    PeerVersionDowngradeError,
    PermissionDeniedError,
    RecordVersionNotNewerError,
    ResourceExhaustedError,
    RevisionConflictError,
    SealedRecordMismatchError,
    TlsRefusedError,
    UnavailableError,
    UnknownMethodError,
    UserNotFoundError,
    quote,
)
from foundation.messaging_ids import CLIENT_MESSAGE_ID, check_client_message_id, check_user_id
from keyrelay.v1 import messaging_pb2

log = logging.getLogger(__name__)

#: The domain-separation prefix of envelope signatures (and the label of the HPKE `info`).
ENVELOPE_PREFIX = b"keyrelay.v1.envelope"
#: How long an opened public-key bundle is used without asking the KMS again, in seconds.
DEFAULT_CACHE_TTL = 300.0
#: How long `receive(follow=False)` waits for another message before it calls the mailbox drained.
DEFAULT_IDLE_TIMEOUT = 1.0
_CACHE_LIMIT = 1024
_SENT_LIMIT = 256
_QUEUE_SIZE = 64
_RECONNECT_FIRST, _RECONNECT_MAX = 0.1, 2.0


class RejectReason(StrEnum):
    """Why a received envelope was rejected."""

    #: Not a SignedEnvelope holding an EnvelopeBody, or a field out of its rules.
    MALFORMED = "malformed"
    #: The sender has no published bundle of the version the envelope names.
    UNKNOWN_SENDER_KEY = "unknown-sender-key"
    #: The sender's directory record did not open as theirs (sealed for another user, altered).
    SENDER_RECORD_INVALID = "sender-record-invalid"
    #: The KMS would not open the sender's record (its key does not exist, this credential may not
    #: use it, or it is disabled). The envelope stays in the mailbox, without holding up the
    #: messages behind it, for another try by a later delivery, until it has been delivered
    #: `MessengerPolicy.refused_deliveries` times: then it is acknowledged (dropped).
    SENDER_KEY_REFUSED = "sender-key-refused"
    #: Signed with a version of the sender's keys older than the newest this device has seen, more
    #: than `MessengerPolicy.superseded_grace_seconds` after it first saw a newer one.
    SUPERSEDED_SENDER_VERSION = "superseded-sender-version"
    #: The signature does not verify with the sender's signing key.
    BAD_SIGNATURE = "bad-signature"
    #: Validly signed by the relay's sender, but the body claims another sender.
    SENDER_MISMATCH = "sender-mismatch"
    #: The signed body is addressed to another user.
    NOT_ADDRESSED_TO_US = "not-addressed-to-us"
    #: Sealed to a bundle version (or KEM) this device does not have.
    UNKNOWN_RECIPIENT_KEY = "unknown-recipient-key"
    #: The HPKE ciphertext did not open: sealed to another key, or altered.
    UNDECRYPTABLE = "undecryptable"
    #: A message already taken, stored again under another relay message id: a replay.
    REPLAYED = "replayed"
    #: Sent (its signed send time) longer ago than `MessengerPolicy.message_ttl_seconds`, or no
    #: later than a message of the same sender's that this device no longer remembers: too old to
    #: tell from a replay.
    ENVELOPE_TOO_OLD = "envelope-too-old"
    #: Sent further in the future than `MessengerPolicy.clock_skew_seconds`.
    ENVELOPE_FROM_FUTURE = "envelope-from-future"


@dataclass(frozen=True)
class ReceivedMessage:
    """A message whose signature verified and whose content decrypted: genuinely from `sender`.

    `message_id` is the sender's id (the one `send` used); `relay_message_id` the relay's. The
    bundle versions say which sender key signed it and which of this user's keys it was sealed to.
    `plaintext` is not in `repr`.
    """

    sender: str
    message_id: str
    plaintext: bytes = field(repr=False)
    send_time: datetime
    relay_message_id: str
    store_time: datetime
    sender_bundle_version: int
    recipient_bundle_version: int


@dataclass(frozen=True)
class RejectedMessage:
    """An envelope that was not shown: who the relay says sent it, its relay id, and why.

    `detail` says what failed, for a person; it holds ids and versions, never content.
    `acknowledged` is false only for a `SENDER_KEY_REFUSED` envelope kept in the mailbox for
    another try.
    """

    sender: str
    relay_message_id: str
    reason: RejectReason
    detail: str
    acknowledged: bool = True


def _token_life(account: RelayAccount) -> TokenLife:
    expire = account.expire_time.timestamp() if account.expire_time is not None else None
    return TokenLife(time.time(), expire)


def log_rejection(rejected: RejectedMessage) -> None:
    """The default `on_reject`: a warning in this module's log (ids and reason, no content)."""
    log.warning(
        "rejected message %s from %r (%s): %s",
        rejected.relay_message_id, rejected.sender, rejected.reason.value, rejected.detail,
    )


def envelope_info(body: messaging_pb2.EnvelopeBody) -> bytes:
    """The HPKE `info` of an envelope: binds sender, recipient, message id and both bundle versions."""
    fields = (
        body.sender_user_id,
        body.recipient_user_id,
        body.message_id,
        str(body.sender_bundle_version),
        str(body.recipient_bundle_version),
    )
    return b"\n".join([ENVELOPE_PREFIX, *(f.encode() for f in fields)])


def sign_envelope(body: messaging_pb2.EnvelopeBody, signer: DeviceKeyPair) -> bytes:
    """The serialized SignedEnvelope of `body`, signed with `signer`'s Ed25519 key."""
    body_bytes = body.SerializeToString(deterministic=True)
    signature = signer.signing_key.sign(ENVELOPE_PREFIX + body_bytes)
    return messaging_pb2.SignedEnvelope(body=body_bytes, signature=signature).SerializeToString()


@dataclass(frozen=True)
class _PeerBundle:
    """An opened, checked public-key bundle of one user and version."""

    user_id: str
    bundle_version: int
    kem: KemSpec = field(repr=False)
    kem_public_key: Any = field(repr=False)
    kem_public_bytes: bytes = field(repr=False)
    signing_public_key: Ed25519PublicKey = field(repr=False)
    signing_public_bytes: bytes = field(repr=False)
    opened_at: float


class Messenger:
    """One user's end-to-end encrypted messaging on one device (see the module docstring).

    Make one with `Messenger.register` (a new user) or `Messenger.open` (a device file made
    earlier). The KMS client needs a `messaging-user` credential allowed on the sealing key; the
    relay client gets the device token from the device file.

    Args:
        kms: a `KmsClient` (SealPublicKey, OpenPublicKey, DescribeKey).
        relay: a `RelayClient` of the user's relay.
        device: the loaded device file.
        cache_ttl: seconds an opened public-key bundle is used before the KMS opens it again.
        policy: what is refused as old, repeated, rolled back or undeliverable (see
            `MessengerPolicy` for the defaults).
        clock: monotonic seconds, for the caches (tests give a fake one).
        wall_clock: Unix seconds, for send times and the policy's periods (tests give a fake one).
    """

    def __init__(
        self,
        kms,
        relay,
        device: DeviceKeys,
        *,
        cache_ttl: float = DEFAULT_CACHE_TTL,
        policy: MessengerPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if cache_ttl < 0:
            raise ValueError(f"cache_ttl must be 0 or more seconds, not {cache_ttl!r}")
        self._kms = kms
        self._relay = relay
        self._device = device
        self._cache_ttl = float(cache_ttl)
        self._clock = clock
        self._lock = threading.Lock()
        self._peers: OrderedDict[tuple[str, int], _PeerBundle] = OrderedDict()
        # (sender, version) -> (reason, detail, until): records that failed to open, not tried again
        # before `until` (monotonic), so that a bad sender costs one KMS call, not one per message.
        self._unopened: OrderedDict[tuple[str, int], tuple[RejectReason, str, float]] = OrderedDict()
        self._sent: OrderedDict[str, tuple[bytes, bytes]] = OrderedDict()  # message id -> (digest, envelope)
        self._wall = wall_clock
        self._state = MessengerState(device, policy or MessengerPolicy(), wall_clock)
        relay.device_token = device.device_token

    def __repr__(self) -> str:
        return f"Messenger(user_id={self.user_id!r}, bundle_version={self.bundle_version})"

    # -- set-up ---------------------------------------------------------------------------------

    @classmethod
    def register(
        cls,
        kms,
        relay,
        user_id: str,
        *,
        key_id: str,
        device_file: str | Path,
        passphrase: str | bytes,
        kem: str = DEFAULT_KEM,
        scrypt_n: int = SCRYPT_N,
        **options: Any,
    ) -> "Messenger":
        """Create the relay account `user_id`, make the key pairs of bundle version 1 on this device,
        save them in a new `device_file` under `passphrase`, and seal and publish the public bundle.

        `key_id` (an id or alias) names the KMS key that seals the bundle. `kem` is
        `"mlkem768-x25519"` (the default: post-quantum hybrid) or `"x25519"`. Other keyword
        arguments go to the constructor.

        Raises:
            AlreadyExistsError: `device_file` exists (checked before anything is created).
            AccountExistsError: the user id is taken on the relay.
            InvalidUserIdError, InvalidArgumentError: a bad user id, KEM or an empty passphrase.
            KeyrelayError: what the KMS or relay raised. If publishing fails after the device file
                was written, `Messenger.open` it and call `publish()`.
        """
        kem_spec(kem)
        DeviceKeys.check_new(device_file, passphrase, user_id=user_id, scrypt_n=scrypt_n)
        kms_key_id = kms.describe_key(key_id).key_id  # resolves an alias; fails early if not allowed
        pair = DeviceKeyPair.generate(1, kem)
        account = relay.create_account(user_id)
        device = DeviceKeys.create(
            device_file, passphrase, user_id=user_id, device_token=account.device_token,
            kms_key_id=kms_key_id, key_pair=pair, scrypt_n=scrypt_n, token_life=_token_life(account),
        )
        messenger = cls(kms, relay, device, **options)
        messenger.publish()
        return messenger

    @classmethod
    def open(cls, kms, relay, device_file: str | Path, passphrase: str | bytes, **options: Any) -> "Messenger":
        """The messenger of an existing device file (its token is set on `relay`).

        Once half of the relay device token's lifetime is gone (or, for a device file from before
        tokens expired, at the first open), the token is rotated and the new one saved; should
        that fail, the old token is kept and the next open tries again.

        Raises:
            NotFoundError: no device file there.
            CiphertextAuthenticationError: a wrong passphrase (or an altered file).
        """
        messenger = cls(kms, relay, DeviceKeys.load(device_file, passphrase), **options)
        messenger.renew_device_token()
        return messenger

    # -- the relay device token -------------------------------------------------------------------

    def renew_device_token(self) -> bool:
        """Rotate the relay device token if half of its lifetime is gone; True if it was.

        Never raises for a relay that cannot rotate now (unreachable, rate limited, or too old to
        know the call): the token still works, and a later call tries again."""
        if not self._device.token_life.renewal_due(self._wall()):
            return False
        try:
            self.rotate_device_token()
        except (UnavailableError, DeadlineExceededError, ResourceExhaustedError, UnknownMethodError) as exc:
            log.warning("could not rotate the relay device token of %s yet (%s); it still works", self.user_id, exc.reason)
            return False
        return True

    def rotate_device_token(self, *, revoke_previous: bool = False) -> RelayAccount:
        """Replace the relay device token with a new one and save it in the device file.

        The old token keeps working for the relay's grace period (so other processes of this
        device are not cut off before they read the file again), or not at all with
        `revoke_previous` (a token that may have leaked). Should saving fail, the old token still
        works for that grace period: rotate again with it."""
        account = self._relay.rotate_device_token(revoke_previous=revoke_previous)
        self._device.replace_device_token(account.device_token, _token_life(account))
        log.info("relay device token of %s rotated", self.user_id)
        return account

    def revoke_device_token(self, *, all_tokens: bool = False) -> int:
        """Revoke this device's relay token (the device signs out for good) or, with
        `all_tokens`, every token of the account; returns how many were revoked. Only a token the
        relay operator issues opens the account again."""
        return self._relay.revoke_device_token(all_tokens=all_tokens)

    @property
    def user_id(self) -> str:
        return self._device.user_id

    @property
    def bundle_version(self) -> int:
        """The newest bundle version published in the directory (the one that signs what we send)."""
        return self._device.published_version

    @property
    def device(self) -> DeviceKeys:
        return self._device

    @property
    def policy(self) -> MessengerPolicy:
        """What this messenger refuses as old, repeated, rolled back or undeliverable."""
        return self._state.policy

    def publish(self) -> int:
        """Seal and publish the newest bundle version unless the directory has it; returns it.

        Safe to repeat: a version the directory already holds (published before a crash) is
        accepted if the record there opens to this device's keys.

        Raises:
            RevisionConflictError: the directory holds a record of this version (or a newer one)
                that this device did not make.
        """
        pair = self._device.newest
        if pair.bundle_version <= self._device.published_version:
            return self._device.published_version
        user_id, key_id = self.user_id, self._device.kms_key_id
        bundle = pair.public_bundle(user_id).SerializeToString(deterministic=True)
        sealed = self._kms.seal_public_key(key_id, user_id, bundle, pair.bundle_version)
        try:
            self._relay.publish_record(sealed, key_id)
        except RecordVersionNotNewerError:
            self._check_published(pair)
        self._device.mark_published(pair.bundle_version)
        return pair.bundle_version

    def _check_published(self, pair: DeviceKeyPair) -> None:
        conflict = RevisionConflictError(
            f"the directory already holds bundle version {pair.bundle_version} (or a newer one) of "
            f"{self.user_id!r} that this device did not make: someone else holds this account's token"
        )
        try:
            published = self._peer(self.user_id, pair.bundle_version)
        except (UserNotFoundError, SealedRecordMismatchError):
            raise conflict from None
        if (published.signing_public_bytes, published.kem_public_bytes) != (
            pair.signing_public_bytes(), pair.kem_public_bytes()
        ):
            raise conflict

    def reregister(self, kem: str | None = None) -> int:
        """Rotate keys: make the key pairs of the next bundle version (same KEM unless `kem` names
        one), save them to the device file first, then seal and publish them. Returns the new
        version. Peers encrypt to it from their next message; messages sealed to older versions
        still decrypt. If publishing fails, call `publish()` again.
        """
        self._device.add_key_pair(kem)
        return self.publish()

    # -- public keys of peers -------------------------------------------------------------------

    def _peer(self, user_id: str, bundle_version: int = 0) -> _PeerBundle:
        """The opened bundle of `user_id`: of `bundle_version`, or (0) of the directory's newest
        record, asked for on every call so that a new version is used at once, and refused if it
        is older than a version this device has seen."""
        record: DirectoryRecord | None = None
        if bundle_version == 0:
            record = self._relay.get_record(user_id)
            bundle_version = record.record_version
            newest = self._state.newest(user_id)
            if bundle_version < newest:
                raise PeerVersionDowngradeError(
                    f"the directory gives version {bundle_version} as {user_id!r}'s newest record, but this device has "
                    f"seen their version {newest}: the relay is serving an old record (rolling back their keys), so "
                    "nothing is encrypted to it; try again later, or ask the relay's operator"
                )
        with self._lock:
            if record is not None:
                # A version change drops what was opened of the older ones.
                for key in [k for k in self._peers if k[0] == user_id and k[1] != bundle_version]:
                    del self._peers[key]
            cached = self._peers.get((user_id, bundle_version))
            if cached is not None and self._clock() - cached.opened_at < self._cache_ttl:
                self._peers.move_to_end((user_id, bundle_version))
                return cached
        if record is None:
            record = self._relay.get_record(user_id, bundle_version)
        peer = self._open_record(user_id, bundle_version, record)
        with self._lock:
            self._peers[(user_id, bundle_version)] = peer
            while len(self._peers) > _CACHE_LIMIT:
                self._peers.popitem(last=False)
        self._state.observe(user_id, bundle_version)
        return peer

    def _sender_bundle(self, sender: str, version: int) -> _PeerBundle | tuple[RejectReason, str]:
        """The opened bundle of `sender`'s `version`, or why it cannot be had: the envelope's fault
        (anyone may publish a record that does not open for us). A failure is remembered for
        `refusal_cache_seconds`: the KMS is not asked again for that record meanwhile."""
        key = (sender, version)
        with self._lock:
            failed = self._unopened.get(key)
            if failed is not None and self._clock() < failed[2]:
                return failed[0], failed[1]
        try:
            return self._peer(sender, version)
        except UserNotFoundError:
            reason, detail = RejectReason.UNKNOWN_SENDER_KEY, f"{sender!r} has no published bundle version {version}"
        except (PermissionDeniedError, KeyNotFoundError, FailedPreconditionError) as exc:
            # Its key does not exist, is another tenant's or disabled, or this credential may not use it.
            reason = RejectReason.SENDER_KEY_REFUSED
            detail = f"the KMS would not open {sender!r}'s bundle version {version}: {exc.message}"
        except SealedRecordMismatchError as exc:
            reason, detail = RejectReason.SENDER_RECORD_INVALID, exc.message
        except InvalidArgumentError as exc:  # e.g. a wrapped key that is no KMS ciphertext at all
            reason = RejectReason.SENDER_RECORD_INVALID
            detail = f"{sender!r}'s bundle version {version} is not a record the KMS can open: {exc.message}"
        with self._lock:
            self._unopened[key] = (reason, detail, self._clock() + self.policy.refusal_cache_seconds)
            self._unopened.move_to_end(key)
            while len(self._unopened) > _CACHE_LIMIT:
                self._unopened.popitem(last=False)
        return reason, detail

    def _open_record(self, user_id: str, bundle_version: int, record: DirectoryRecord) -> _PeerBundle:
        """Open `record` through the KMS and check that it is `user_id`'s bundle `bundle_version`."""

        def mismatch(what: str) -> SealedRecordMismatchError:
            return SealedRecordMismatchError(
                f"the directory record of {user_id!r}, version {bundle_version}, {what}: it is not used"
            )

        sealed = record.sealed
        if (record.user_id, sealed.user_id) != (user_id, user_id):
            raise mismatch(f"is sealed for user {sealed.user_id!r}")
        if (record.record_version, sealed.bundle_version) != (bundle_version, bundle_version):
            raise mismatch(f"is version {record.record_version} sealed as bundle version {sealed.bundle_version}")
        opened = self._kms.open_public_key(sealed)  # the KMS refuses a record not sealed for exactly this
        if opened.key_id != record.kms_key_id:
            raise mismatch(f"was sealed under KMS key {opened.key_id!r}, not {record.kms_key_id!r} as it says")
        try:
            bundle = messaging_pb2.PublicKeyBundle.FromString(opened.public_key_bundle)
        except DecodeError:
            raise mismatch("holds no public-key bundle") from None
        if (bundle.user_id, bundle.bundle_version) != (user_id, bundle_version):
            raise mismatch(f"holds the bundle of {bundle.user_id!r}, version {bundle.bundle_version}")
        kem = KEMS_BY_ALGORITHM.get(bundle.kem)
        if kem is None:
            raise mismatch(f"names an unknown KEM ({bundle.kem})")
        try:
            kem_public_key = kem.public_key(bundle.kem_public_key)
            signing_public_key = Ed25519PublicKey.from_public_bytes(bundle.signing_public_key)
        except ValueError:
            raise mismatch("holds a malformed public key") from None
        return _PeerBundle(
            user_id, bundle_version, kem, kem_public_key, bundle.kem_public_key,
            signing_public_key, bundle.signing_public_key, self._clock(),
        )

    # -- send -----------------------------------------------------------------------------------

    def send(self, recipient: str, plaintext: bytes, *, message_id: str | None = None) -> SendReceipt:
        """Encrypt `plaintext` to `recipient`'s newest published key, sign it, and store it at the relay.

        `message_id` (default: a random UUID) is the envelope's message id and the relay's client
        message id: sending again with the same id (after an error, say) stores the message once,
        and receivers drop repeats by it. Reusing an id for a different message is refused.

        Raises:
            InvalidUserIdError, InvalidArgumentError: a bad recipient or message id.
            EnvelopeTooLargeError: the envelope would exceed the relay's 256 KiB.
            UserNotFoundError: the recipient has no account or no published record.
            SealedRecordMismatchError: the recipient's directory record is not theirs.
            PeerVersionDowngradeError: the directory's newest record of the recipient is older
                than one this device has seen (a relay rolling back their keys).
            FailedPreconditionError: this user has not published a bundle yet (call `publish()`).
        """
        check_user_id(recipient, "recipient user id")
        if not isinstance(plaintext, (bytes, bytearray, memoryview)):
            raise TypeError(f"plaintext must be bytes, not {type(plaintext).__name__}")
        plaintext = bytes(plaintext)
        message_id = uuid.uuid4().hex if message_id is None else check_client_message_id(message_id)
        digest = hashlib.sha256(recipient.encode() + b"\0" + plaintext).digest()
        with self._lock:
            earlier = self._sent.get(message_id)
        if earlier is not None and earlier[0] != digest:
            raise InvalidArgumentError(
                f"message id {message_id!r} was already used for a different message: use a new id for "
                "each message, and the same id only to send the same message again"
            )
        # The same envelope again: HPKE is randomized, and the relay stores an id only with its bytes.
        envelope = earlier[1] if earlier is not None else self._seal(recipient, plaintext, message_id)
        with self._lock:
            self._sent[message_id] = (digest, envelope)
            self._sent.move_to_end(message_id)
            while len(self._sent) > _SENT_LIMIT:
                self._sent.popitem(last=False)
        return self._relay.send(recipient, envelope, client_message_id=message_id)

    def _seal(self, recipient: str, plaintext: bytes, message_id: str) -> bytes:
        signer = self._device.key_pair(self._device.published_version)
        if signer is None:
            raise FailedPreconditionError(
                f"{self.user_id!r} has no published bundle yet, so nobody could verify a message: call publish()"
            )
        peer = self._peer(recipient)
        body = messaging_pb2.EnvelopeBody(
            sender_user_id=self.user_id,
            recipient_user_id=recipient,
            message_id=message_id,
            sender_bundle_version=signer.bundle_version,
            recipient_bundle_version=peer.bundle_version,
            kem=peer.kem.algorithm,
        )
        body.send_time.FromDatetime(datetime.now(timezone.utc))
        body.hpke_ciphertext = peer.kem.suite.encrypt(plaintext, peer.kem_public_key, info=envelope_info(body))
        return sign_envelope(body, signer)

    # -- receive --------------------------------------------------------------------------------

    def receive(
        self,
        *,
        follow: bool = False,
        on_reject: Callable[[RejectedMessage], None] | None = None,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> Iterator[ReceivedMessage]:
        """The genuine messages of this user's mailbox, oldest first.

        With `follow=False` iteration ends once the mailbox is drained: no message came for
        `idle_timeout` seconds (and an interrupted stream raises `UnavailableError`). With
        `follow=True` it waits for new messages for as long as you iterate, reconnecting when the
        relay restarts (but not when TLS refused the connection: `TlsRefusedError` is raised).

        A message is acknowledged once you have taken it: when you ask for the next one, or close
        the generator (`break` does, and so does leaving a `with contextlib.closing(...)` block).
        Acknowledgements go out in batches, whenever the mailbox has nothing more queued. Handle
        each message inside the loop: a message whose handling raised out of the loop is
        acknowledged when the generator is closed or collected.

        Rejected envelopes are passed to `on_reject` (default: `log_rejection`, a warning in this
        module's log) and acknowledged, but for a `SENDER_KEY_REFUSED` one before its last allowed
        delivery (`MessengerPolicy.refused_deliveries`); they are never yielded.

        Raises:
            UnavailableError, KeyrelayError: the relay or KMS failed in a way that is not the
                envelope's fault; unacknowledged messages stay in the mailbox.
        """
        report = on_reject or log_rejection
        reader = _MailboxReader(self._relay, follow)
        pending: list[str] = []  # relay ids to acknowledge
        taken: ReceivedMessage | None = None
        failure: BaseException | None = None
        reader.start()
        try:
            while True:
                message = reader.get(0)
                if message is _EMPTY:
                    self._flush(pending)
                    message = reader.get(None if follow else idle_timeout)
                if message is _EMPTY or message is _END:
                    return
                outcome = self._open_envelope(message)
                if isinstance(outcome, ReceivedMessage):
                    taken = outcome
                    yield outcome
                    self._taken(outcome, pending)
                    taken = None
                    continue
                if outcome is None or outcome.acknowledged:
                    pending.append(message.message_id)
                if outcome is not None:
                    report(outcome)
        except GeneratorExit:
            raise
        except BaseException as exc:
            failure = exc
            raise
        finally:
            if taken is not None:  # closed while the application held it: it has it
                self._taken(taken, pending)
            reader.stop()
            try:
                self._flush(pending)
            except KeyrelayError as exc:
                if failure is None:
                    raise
                # Keep the error that ended the stream; unacknowledged messages come again and,
                # if taken, are dropped as repeats.
                log.warning("could not acknowledge %d message(s): %s", len(pending), exc.message)

    def _taken(self, message: ReceivedMessage, pending: list[str]) -> None:
        self._state.take(message.sender, message.message_id, message.send_time.timestamp(), message.relay_message_id)
        pending.append(message.relay_message_id)

    def _flush(self, pending: list[str]) -> None:
        """Save the seen ids, then acknowledge `pending` (so an acknowledged repeat is dropped)."""
        self._state.save()
        if pending:
            self._relay.ack(pending)
            pending.clear()

    def _open_envelope(self, message: RelayMessage) -> ReceivedMessage | RejectedMessage | None:
        """The genuine message in `message`, a rejection, or None for a repeat of a taken one."""
        sender = message.sender_user_id

        def reject(reason: RejectReason, detail: str) -> RejectedMessage:
            return RejectedMessage(sender, message.message_id, reason, detail)

        try:
            signed = messaging_pb2.SignedEnvelope.FromString(message.envelope)
            # Read before the signature verifies only to pick the key that must have signed it.
            body = messaging_pb2.EnvelopeBody.FromString(signed.body)
        except DecodeError:
            return reject(RejectReason.MALFORMED, "the envelope is not a SignedEnvelope with an EnvelopeBody")
        version = body.sender_bundle_version
        if version < 1:
            return reject(RejectReason.MALFORMED, "the envelope names no sender bundle version")
        # Checked before the signature (the version picks the key), so that a superseded key costs
        # no KMS call; a forger naming an old version is refused either way.
        superseded = self._state.superseded(sender, version)
        if superseded is not None:
            return reject(RejectReason.SUPERSEDED_SENDER_VERSION, self._superseded_detail(sender, version, superseded))
        peer = self._sender_bundle(sender, version)
        if isinstance(peer, tuple):
            reason, detail = peer
            if reason is RejectReason.SENDER_KEY_REFUSED:
                return self._refused(message, detail)
            return reject(reason, detail)
        try:
            peer.signing_public_key.verify(signed.signature, ENVELOPE_PREFIX + signed.body)
        except InvalidSignature:
            return reject(
                RejectReason.BAD_SIGNATURE, f"the signature does not verify with {sender!r}'s bundle version {version}"
            )
        # From here on the body is the sender's own.
        if body.sender_user_id != sender:
            claimed = body.sender_user_id
            return reject(RejectReason.SENDER_MISMATCH, f"signed by {sender!r} but claims to be from {claimed!r}")
        if body.recipient_user_id != self.user_id or message.recipient_user_id != self.user_id:
            return reject(RejectReason.NOT_ADDRESSED_TO_US, f"addressed to {body.recipient_user_id!r}")
        try:
            send_time = to_datetime(body.send_time)
        except (ValueError, OverflowError, OSError):
            send_time = None
        if not CLIENT_MESSAGE_ID.fullmatch(body.message_id) or not body.HasField("send_time") or send_time is None:
            return reject(RejectReason.MALFORMED, "the envelope has no valid message id or send time")
        # The same seconds `_taken` remembers, to the microsecond.
        freshness = self._state.freshness(sender, body.message_id, send_time.timestamp(), message.message_id)
        if freshness is Freshness.REDELIVERED:
            return None
        if freshness is not Freshness.NEW:
            return reject(*self._stale(freshness, sender, body.message_id, send_time))
        to_version = body.recipient_bundle_version
        if to_version > max(self._device.bundle_versions):
            self._device.refresh()  # another process of this device may have re-registered
        mine = self._device.key_pair(to_version)
        if mine is None or mine.kem.algorithm != body.kem:
            return reject(
                RejectReason.UNKNOWN_RECIPIENT_KEY,
                f"sealed to bundle version {to_version} (KEM {body.kem}), which this device lacks",
            )
        try:
            plaintext = mine.kem.suite.decrypt(body.hpke_ciphertext, mine.kem_private_key, info=envelope_info(body))
        except (InvalidTag, ValueError):
            return reject(
                RejectReason.UNDECRYPTABLE,
                f"did not decrypt with bundle version {to_version}: sealed to another key, or altered",
            )
        return ReceivedMessage(
            sender=sender,
            message_id=body.message_id,
            plaintext=plaintext,
            send_time=send_time,
            relay_message_id=message.message_id,
            store_time=message.store_time,
            sender_bundle_version=version,
            recipient_bundle_version=to_version,
        )

    def _refused(self, message: RelayMessage, detail: str) -> RejectedMessage:
        """The rejection of an envelope whose sender's record the KMS refused: kept in the mailbox
        (in case the refusal was a mistake being mended) until its last allowed delivery."""
        deliveries, allowed = self._state.refused_delivery(message.message_id), self.policy.refused_deliveries
        dropped = deliveries >= allowed
        if dropped:
            detail += f"; dropped after {deliveries} deliveries"
        else:
            detail += f"; left in the mailbox for another try (delivery {deliveries} of {allowed})"
        return RejectedMessage(message.sender_user_id, message.message_id, RejectReason.SENDER_KEY_REFUSED, detail, dropped)

    def _superseded_detail(self, sender: str, version: int, superseded: Superseded) -> str:
        grace = _duration(self.policy.superseded_grace_seconds)
        if superseded.since is None:
            when = f"more than {grace} ago"
        else:
            when = f"{_duration(self._wall() - superseded.since)} ago (messages in flight are accepted for {grace})"
        return (
            f"signed with {sender!r}'s bundle version {version}, which their version {superseded.version} replaced: "
            f"this device first saw that {when}"
        )

    def _stale(self, freshness: Freshness, sender: str, message_id: str, send_time: datetime) -> tuple[RejectReason, str]:
        """The reason and detail of an envelope that is not new."""
        policy, age = self.policy, self._wall() - send_time.timestamp()
        if freshness is Freshness.REPLAYED:
            return RejectReason.REPLAYED, (
                f"{sender!r}'s message {quote(message_id)} was received already; this copy was stored again "
                "under another relay message id"
            )
        if freshness is Freshness.FUTURE:
            return RejectReason.ENVELOPE_FROM_FUTURE, (
                f"sent {_duration(-age)} in the future, more than the {_duration(policy.clock_skew_seconds)} "
                "that clocks may differ by"
            )
        if freshness is Freshness.EXPIRED:
            return RejectReason.ENVELOPE_TOO_OLD, (
                f"sent {_duration(age)} ago, longer than the message TTL of {_duration(policy.message_ttl_seconds)}: "
                "too old to tell from a replay"
            )
        return RejectReason.ENVELOPE_TOO_OLD, (
            f"sent {_duration(age)} ago, no later than a message of {sender!r}'s that this device no longer "
            f"remembers (it keeps {policy.seen_limit} message ids): too old to tell from a replay"
        )

def _duration(seconds: float) -> str:
    """`seconds` for a person: "30 days", "25 hours", "5 minutes", "12 seconds"."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= 2 * size:
            count = round(seconds / size)
            return f"{count} {unit}s"
    count = round(seconds)
    return f"{count} second" + ("" if count == 1 else "s")


# -- reading the mailbox ------------------------------------------------------------------------

_EMPTY = object()  # nothing queued within the wait
_END = object()  # the stream ended (follow=False)


class _MailboxReader:
    """Reads the mailbox's Subscribe stream on a thread into a small queue, so that the consumer
    can wait for the next message with a timeout (a stream read cannot time out by itself)."""

    def __init__(self, relay, follow: bool) -> None:
        self._relay = relay
        self._follow = follow
        self._queue: queue.Queue = queue.Queue(maxsize=_QUEUE_SIZE)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._subscription = None
        self._thread = threading.Thread(target=self._run, name="keyrelay-mailbox", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def get(self, timeout: float | None):
        """The next RelayMessage, `_EMPTY` after `timeout` seconds (0: don't wait), or `_END`;
        raises what ended the stream."""
        try:
            item = self._queue.get(timeout=timeout) if timeout != 0 else self._queue.get_nowait()
        except queue.Empty:
            return _EMPTY
        if isinstance(item, BaseException):
            raise item
        return item

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            subscription = self._subscription
        if subscription is not None:
            subscription.cancel()
        self._thread.join(5)

    def _put(self, item) -> bool:
        while not self._stopping.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def _run(self) -> None:
        delay = _RECONNECT_FIRST
        while not self._stopping.is_set():
            subscription = None
            try:
                subscription = self._relay.subscribe()
                with self._lock:
                    self._subscription = subscription
                if self._stopping.is_set():
                    return
                for message in subscription:
                    delay = _RECONNECT_FIRST
                    if not self._put(message):
                        return
                if not self._follow:
                    self._put(_END)
                    return
            except TlsRefusedError as exc:  # reconnecting will not help
                self._put(exc)
                return
            except UnavailableError as exc:
                if not self._follow:
                    self._put(exc)
                    return
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
                self._put(exc)
                return
            finally:
                if subscription is not None:
                    subscription.cancel()
            if self._stopping.wait(delay * random.uniform(0.5, 1.0)):
                return
            delay = min(delay * 2, _RECONNECT_MAX)
