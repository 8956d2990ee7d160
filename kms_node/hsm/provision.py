"""`keyrelay hsm init`: initialise a pool's tokens and provision its domain key (the ceremony).

1. Every token label of the pool that no token carries yet is given to an uninitialised token
   (``C_InitToken`` with the SO PIN, then ``C_InitPIN`` sets the user PIN).
2. If no token of the pool holds the domain key, 32 random bytes from the HSM's generator are
   imported into every token as the same AES-256 key: token object, private, sensitive, not
   extractable, usable only to wrap and unwrap. The host copy is overwritten right after.
   If any token already holds a domain key, nothing is written: a domain key is never replaced,
   because every CMK of the pool is wrapped by it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pkcs11 import Attribute, KeyType, ObjectClass, TokenFlag
from pkcs11 import exceptions as p11

from foundation.config import Secret
from foundation.errors import FailedPreconditionError
from kms_node.hsm.cryptoki import init_token, load_library

DOMAIN_KEY_BYTES = 32


class ProvisionError(FailedPreconditionError):
    """The pool cannot be provisioned as asked; the message says why and what to do."""


@dataclass(frozen=True)
class ProvisionReport:
    """What `provision_pool` did."""

    initialised_tokens: tuple[str, ...]
    existing_tokens: tuple[str, ...]
    domain_key_label: str


def _free_slot(lib):
    for slot in lib.get_slots(token_present=True):
        token = slot.get_token()
        if not token.flags & TokenFlag.TOKEN_INITIALIZED:
            return slot
    return None


def _initialise_tokens(module: str, labels, so_pin: Secret, user_pin: Secret) -> tuple[list[str], list[str]]:
    lib = load_library(module)
    created, existing = [], []
    for label in labels:
        try:
            lib.get_token(token_label=label)
            existing.append(label)
            continue
        except p11.NoSuchToken:
            pass
        slot = _free_slot(lib)
        if slot is None:
            raise ProvisionError(
                f"no token is labelled {label!r} and the module has no uninitialised token to use; "
                "create one with your HSM vendor's tools (SoftHSM: check SOFTHSM2_CONF's tokendir is writable)"
            )
        init_token(module, slot.slot_id, so_pin.reveal(), label)
        token = lib.get_token(token_label=label)
        with token.open(rw=True, so_pin=so_pin.reveal()) as session:
            session.init_pin(user_pin.reveal())
        created.append(label)
    return created, existing


def provision_pool(
    module: str, labels, *, so_pin: Secret, user_pin: Secret, domain_key_label: str
) -> ProvisionReport:
    """Initialise missing tokens and import one fresh domain key into every token of the pool.

    Raises ProvisionError, naming the tokens, if any token already holds a domain key.
    """
    created, existing = _initialise_tokens(module, labels, so_pin, user_pin)
    lib = load_library(module)
    sessions = []
    try:
        for label in labels:
            token = lib.get_token(token_label=label)
            try:
                sessions.append(token.open(rw=True, user_pin=user_pin.reveal()))
            except p11.UserAlreadyLoggedIn:
                sessions.append(token.open(rw=True))
        holders = [
            label
            for label, session in zip(labels, sessions)
            if list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: domain_key_label}))
        ]
        if holders:
            raise ProvisionError(
                f"token(s) {', '.join(holders)} already hold the domain key {domain_key_label!r}; "
                "a domain key is never overwritten (every master key of the pool is wrapped by it). "
                "To start a new pool, use new token labels"
            )
        material = bytearray(sessions[0].generate_random(DOMAIN_KEY_BYTES * 8))
        try:
            for session in sessions:
                session.create_object(
                    {
                        Attribute.CLASS: ObjectClass.SECRET_KEY,
                        Attribute.KEY_TYPE: KeyType.AES,
                        Attribute.VALUE: bytes(material),
                        Attribute.LABEL: domain_key_label,
                        Attribute.TOKEN: True,
                        Attribute.PRIVATE: True,
                        Attribute.SENSITIVE: True,
                        Attribute.EXTRACTABLE: False,
                        Attribute.MODIFIABLE: False,
                        Attribute.WRAP: True,
                        Attribute.UNWRAP: True,
                        Attribute.ENCRYPT: False,
                        Attribute.DECRYPT: False,
                        Attribute.SIGN: False,
                        Attribute.VERIFY: False,
                        Attribute.DERIVE: False,
                    }
                )
        finally:
            for i in range(len(material)):
                material[i] = 0
    finally:
        for session in sessions:
            try:
                session.close()
            except p11.PKCS11Error:
                pass
    return ProvisionReport(tuple(created), tuple(existing), domain_key_label)
