"""The rules of the relay's requests, shared by the relay (which enforces them) and the SDK (which
checks them before a call): user ids, senders' client message ids, envelope sizes, Ack batches."""

from __future__ import annotations

import re

from foundation.errors import EnvelopeTooLargeError, InvalidArgumentError, InvalidUserIdError

#: A relay user id: 1-64 characters of a-z, 0-9, '.', '_' and '-'.
USER_ID = re.compile(r"[a-z0-9._-]{1,64}")
#: A sender's client message id: 1-128 printable ASCII characters, no spaces.
CLIENT_MESSAGE_ID = re.compile(r"[\x21-\x7e]{1,128}")
#: The largest envelope the relay stores, in bytes (256 KiB).
MAX_ENVELOPE_BYTES = 256 * 1024
#: The most message ids one Ack takes.
MAX_ACK_IDS = 1000


def check_user_id(user_id: str, what: str = "user id") -> str:
    """Return `user_id` if valid; raise InvalidUserIdError saying what a user id may hold."""
    if not isinstance(user_id, str) or not USER_ID.fullmatch(user_id):
        shown = repr(user_id[:80]) if isinstance(user_id, str) else type(user_id).__name__
        raise InvalidUserIdError(
            f"{what} {shown} is not valid: use 1-64 characters of a-z, 0-9, '.', '_' and '-'"
        )
    return user_id


def check_client_message_id(client_message_id: str) -> str:
    """Return `client_message_id` if valid; raise InvalidArgumentError otherwise."""
    if not isinstance(client_message_id, str) or not CLIENT_MESSAGE_ID.fullmatch(client_message_id):
        raise InvalidArgumentError(
            "client_message_id must be 1-128 printable ASCII characters without spaces, unique per sender "
            "(a UUID is a good choice)"
        )
    return client_message_id


def check_envelope(envelope: bytes) -> bytes:
    """Return `envelope` if the relay stores it (1 byte to 256 KiB); raise InvalidArgumentError or
    EnvelopeTooLargeError otherwise."""
    if not envelope:
        raise InvalidArgumentError("the envelope is empty: the relay stores 1 byte to 256 KiB")
    if len(envelope) > MAX_ENVELOPE_BYTES:
        raise EnvelopeTooLargeError(
            f"the envelope is {len(envelope)} bytes; the relay stores at most {MAX_ENVELOPE_BYTES} (256 KiB): "
            "send large content as an encrypted file and message its key"
        )
    return envelope
