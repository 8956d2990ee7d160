"""One messaging user as a process of its own, for tests/e2e/test_messaging.py.

    python messaging_peer.py PROFILE DEVICE_FILE      (passphrase in $KEYRELAY_PEER_PASSPHRASE)

It uses only the SDK, the way an application would: a `KmsClient` and a `RelayClient` from the
user's profile, and a `Messenger` on the user's device file. The test drives it with one JSON
request a line on stdin and reads one JSON reply a line on stdout:

    {"op": "register", "user": "bob", "key_id": "...", "kem": "x25519"}   -> {"bundle_version": 1}
    {"op": "send", "to": "alice", "text": "...", "message_id": "..."}     -> {"relay_message_id": "..."}
    {"op": "receive"}               -> {"messages": [...], "rejected": [...]}   (drains the mailbox)
    {"op": "reregister", "kem": "mlkem768-x25519"}                         -> {"bundle_version": 2}

A keyrelay error becomes {"error": CLASS, "message": ...}. Rejected envelopes are reported both in
the reply and, through the SDK's default handler, as warnings on stderr.
"""

from __future__ import annotations

import json
import logging
import os
import sys

from client_sdk import KeyrelayError, KmsClient, RelayClient
from client_sdk.messenger import Messenger, RejectedMessage, log_rejection


def main(profile: str, device_file: str) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    passphrase = os.environ["KEYRELAY_PEER_PASSPHRASE"]
    kms, relay = KmsClient(profile=profile), RelayClient(profile=profile)
    messenger: Messenger | None = None
    if os.path.exists(device_file):
        messenger = Messenger.open(kms, relay, device_file, passphrase)

    def handle(request: dict) -> dict:
        nonlocal messenger
        op = request["op"]
        if op == "register":
            messenger = Messenger.register(
                kms, relay, request["user"], key_id=request["key_id"], device_file=device_file,
                passphrase=passphrase, kem=request["kem"],
            )
            return {"bundle_version": messenger.bundle_version}
        if op == "send":
            receipt = messenger.send(request["to"], request["text"].encode(), message_id=request.get("message_id"))
            return {"relay_message_id": receipt.message_id, "duplicate": receipt.duplicate}
        if op == "receive":
            rejected: list[RejectedMessage] = []

            def on_reject(rejection: RejectedMessage) -> None:
                log_rejection(rejection)
                rejected.append(rejection)

            messages = [
                {
                    "sender": m.sender, "message_id": m.message_id, "text": m.plaintext.decode(),
                    "sender_bundle_version": m.sender_bundle_version,
                    "recipient_bundle_version": m.recipient_bundle_version,
                }
                for m in messenger.receive(on_reject=on_reject)
            ]
            return {
                "messages": messages,
                "rejected": [{"sender": r.sender, "relay_message_id": r.relay_message_id, "reason": r.reason.value}
                             for r in rejected],
            }
        if op == "reregister":
            return {"bundle_version": messenger.reregister(request.get("kem"))}
        raise ValueError(f"unknown op {op!r}")

    for line in sys.stdin:
        try:
            reply = handle(json.loads(line))
        except KeyrelayError as exc:
            reply = {"error": type(exc).__name__, "message": str(exc)}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
