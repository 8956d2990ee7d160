"""`keyrelay msg register|rotate|rotate-token|revoke-token|send|recv`: end-to-end encrypted
messages through the relay.

    keyrelay msg register alice --key alias/directory      # keys made here, sealed, published
    echo "lunch at 1?" | keyrelay msg send bob
    keyrelay msg recv --follow

The profile names the KMS (gateway or node) and, in its `[relay]` section, the relay. The
device file (`--device`, default `$KEYRELAY_DEVICE`, else `.keyrelay/device.keys`) holds this
device's private keys and relay token, encrypted under a passphrase read from the file named by
`--passphrase-file`, else `$KEYRELAY_PASSPHRASE`, else asked for on the terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Iterator

from client_sdk.cli import _output as output
from client_sdk.credentials import load_profile
from client_sdk.kms_client import KmsClient
from client_sdk.device_keys import DEFAULT_KEM
from client_sdk.messenger import Messenger, ReceivedMessage, RejectedMessage
from client_sdk.relay_client import RelayClient

DEVICE_ENV = "KEYRELAY_DEVICE"
PASSPHRASE_ENV = "KEYRELAY_PASSPHRASE"
DEFAULT_DEVICE = Path(".keyrelay") / "device.keys"
MAX_MESSAGE_BYTES = 64 * 1024
# The JSON of a received message carries its text (not a field of `ReceivedMessage`'s repr).
_TEXT = {ReceivedMessage: lambda m: {"text": m.plaintext.decode("utf-8", "replace")}}


def _device_path(args: argparse.Namespace) -> Path:
    return Path(args.device or os.environ.get(DEVICE_ENV) or DEFAULT_DEVICE)


def _passphrase(args: argparse.Namespace, *, confirm: bool = False) -> str:
    if args.passphrase_file:
        value = Path(args.passphrase_file).read_text().rstrip("\n")
    elif os.environ.get(PASSPHRASE_ENV):
        value = os.environ[PASSPHRASE_ENV]
    elif sys.stdin.isatty():
        value = getpass.getpass("device passphrase: ")
        if confirm and getpass.getpass("again: ") != value:
            raise output.CliError("the passphrases differ")
    else:
        raise output.CliError(
            f"no passphrase: name a file with --passphrase-file, set {PASSPHRASE_ENV}, or run on a terminal"
        )
    if not value:
        raise output.CliError("the passphrase is empty")
    return value


def _clients(args: argparse.Namespace) -> tuple[KmsClient, RelayClient]:
    profile = load_profile(args.profile)
    kms = KmsClient(args.endpoint, profile=profile)
    return kms, RelayClient(profile=profile)


def _messenger(args: argparse.Namespace, kms: KmsClient, relay: RelayClient) -> Messenger:
    return Messenger.open(kms, relay, _device_path(args), _passphrase(args))


@contextlib.contextmanager
def _opened(args: argparse.Namespace) -> Iterator[Messenger]:
    """The device's messenger, its KMS and relay clients closed on leaving."""
    kms, relay = _clients(args)
    with kms, relay:
        yield _messenger(args, kms, relay)


@output.guarded
def _register(args: argparse.Namespace) -> int:
    kms, relay = _clients(args)
    with kms, relay:
        messenger = Messenger.register(
            kms, relay, args.user_id, key_id=args.key, device_file=_device_path(args),
            passphrase=_passphrase(args, confirm=True), kem=args.kem,
        )
        result = {"user_id": messenger.user_id, "bundle_version": messenger.bundle_version,
                  "device_file": str(_device_path(args)), "kem": args.kem}
    _print(args, result, f"registered {result['user_id']} (bundle version 1, {args.kem}); keys in {result['device_file']}")
    return 0


@output.guarded
def _rotate(args: argparse.Namespace) -> int:
    with _opened(args) as messenger:
        version = messenger.reregister(args.kem)
    _print(args, {"user_id": messenger.user_id, "bundle_version": version},
           f"{messenger.user_id} now publishes bundle version {version}; peers use it from their next message")
    return 0


@output.guarded
def _rotate_token(args: argparse.Namespace) -> int:
    with _opened(args) as messenger:
        account = messenger.rotate_device_token(revoke_previous=args.revoke_previous)
    expires = account.expire_time.strftime("%Y-%m-%d %H:%M:%S UTC") if account.expire_time else "never"
    previous = "revoked" if args.revoke_previous else "works until " + (
        account.previous_token_expire_time.strftime("%Y-%m-%d %H:%M:%S UTC")
        if account.previous_token_expire_time else "the relay's grace period ends"
    )
    result = {"user_id": messenger.user_id, "expire_time": account.expire_time,
              "previous_token_expire_time": account.previous_token_expire_time}
    _print(args, result, f"{messenger.user_id}: new relay device token saved in {_device_path(args)} (expires: "
                         f"{expires}); the previous one {previous}")
    return 0


@output.guarded
def _revoke_token(args: argparse.Namespace) -> int:
    with _opened(args) as messenger:
        count = messenger.revoke_device_token(all_tokens=args.all)
    _print(args, {"user_id": messenger.user_id, "revoked_count": count},
           f"{messenger.user_id}: {count} relay device token(s) revoked; this device can no longer use the relay "
           "until the relay operator issues a token (keyrelay relay --issue-token)")
    return 0


@output.guarded
def _send(args: argparse.Namespace) -> int:
    text = args.message.encode() if args.message is not None else output.read_input(
        None, limit=MAX_MESSAGE_BYTES, what="message"
    )
    if not text:
        raise output.CliError("the message is empty")
    with _opened(args) as messenger:
        receipt = messenger.send(args.recipient, text, message_id=args.message_id)
    _print(args, receipt, f"sent to {args.recipient} (message {receipt.client_message_id})")
    return 0


@output.guarded
def _recv(args: argparse.Namespace) -> int:
    rejected: list[RejectedMessage] = []

    def report(item: RejectedMessage) -> None:
        rejected.append(item)
        output.warn(f"rejected a message from {item.sender!r} ({item.reason.value}): {item.detail}")

    with _opened(args) as messenger:
        for message in messenger.receive(follow=args.follow, on_reject=report):
            if args.output == "json":  # one JSON document per line, as messages arrive
                print(json.dumps(output.to_plain(message, _TEXT), sort_keys=True), flush=True)
            else:
                when = message.send_time.strftime("%Y-%m-%d %H:%M:%S")
                # The text is the sender's: shown escaped, it cannot drive the terminal or fake a line.
                text = output.terminal_safe(message.plaintext.decode("utf-8", "replace"))
                print(f"[{when}] {message.sender}: {text}", flush=True)
    return 1 if rejected and args.strict else 0


def _print(args: argparse.Namespace, value, text: str) -> None:
    print(output.format_json(value) if args.output == "json" else text)


def register(commands) -> None:
    """Add `msg register|rotate|rotate-token|revoke-token|send|recv` to the `keyrelay` parser."""
    common = output.common_options()
    group = output.add_group(
        commands, "msg", "end-to-end encrypted messages through the relay",
        "keyrelay msg send bob 'lunch at 1?'",
    )

    def command(name: str, help: str, examples: list[str], func) -> argparse.ArgumentParser:
        parser = output.add_command(group, name, help, examples, parents=[common])
        parser.set_defaults(func=func)
        parser.add_argument("--device", metavar="FILE",
                            help=f"the device file (default: ${DEVICE_ENV}, else {DEFAULT_DEVICE})")
        parser.add_argument("--passphrase-file", metavar="FILE",
                            help=f"read the device passphrase from FILE (default: ${PASSPHRASE_ENV}, else a prompt)")
        return parser

    p = command(
        "register", "create a relay account, make this device's keys, seal and publish them",
        ["keyrelay msg register alice --key alias/directory",
         "keyrelay msg register bob --key alias/directory --kem x25519 --device bob.keys"],
        _register,
    )
    p.add_argument("user_id", metavar="USER", help="the user id to claim: 1-64 of a-z, 0-9, '.', '_', '-'")
    p.add_argument("--key", required=True, metavar="KEY", help="the KMS key (id or alias/NAME) that seals the public keys")
    p.add_argument("--kem", choices=("mlkem768-x25519", "x25519"), default=DEFAULT_KEM,
                   help=f"HPKE key encapsulation (default {DEFAULT_KEM}, post-quantum hybrid)")

    p = command(
        "rotate", "make new key pairs and publish them; peers use them from their next message",
        ["keyrelay msg rotate", "keyrelay msg rotate --kem x25519"], _rotate,
    )
    p.add_argument("--kem", choices=("mlkem768-x25519", "x25519"), default=None, help="change the KEM too")

    p = command(
        "rotate-token", "replace this device's relay token with a new one (devices also do it by themselves "
        "once half of its lifetime is gone)",
        ["keyrelay msg rotate-token", "keyrelay msg rotate-token --revoke-previous   # the old token may have leaked"],
        _rotate_token,
    )
    p.add_argument("--revoke-previous", action="store_true",
                   help="revoke the old token at once instead of after the relay's grace period")

    p = command(
        "revoke-token", "revoke this device's relay token (or, with --all, every token of the account)",
        ["keyrelay msg revoke-token", "keyrelay msg revoke-token --all"], _revoke_token,
    )
    p.add_argument("--all", action="store_true", help="revoke every token of the account, not only this device's")

    p = command(
        "send", "encrypt a message to a user and post it to the relay",
        ["keyrelay msg send bob 'lunch at 1?'", "echo 'the report is ready' | keyrelay msg send carol"], _send,
    )
    p.add_argument("recipient", metavar="USER", help="the recipient's user id")
    p.add_argument("message", metavar="TEXT", nargs="?", help="the message (default: read stdin)")
    p.add_argument("--message-id", metavar="ID", help="the message's id, to resend it safely after a failure")

    p = command(
        "recv", "print this user's messages, verified and decrypted, and acknowledge them (rejected "
        "ones are reported on stderr, never printed)",
        ["keyrelay msg recv", "keyrelay msg recv --follow --output json   # one JSON document per line"], _recv,
    )
    p.add_argument("--follow", "-f", action="store_true", help="keep waiting for new messages until Ctrl-C")
    p.add_argument("--strict", action="store_true", help="exit 1 if any message was rejected")
