"""End-to-end messaging through real processes: a KMS cluster (shared nodes, dedicated node, gateway)
and a relay, each a `keyrelay` process, and Alice and Bob each a process of their own
(tests/e2e/messaging_peer.py) that uses only the SDK with its own profile and device file.

- Must-be-true 3: Alice and Bob exchange messages intact; envelopes forged by Mallory, a third
  registered user (one claiming to be from Alice, one with a bad signature, one sealed to
  Mallory's own key), are rejected and reported by Bob's process and never shown as genuine.
- Must-be-true 4: after Bob re-registers, Alice's next message is encrypted to his new key (the
  envelope the relay holds says so, and Bob decrypts it), while a message in flight to his old
  key still decrypts.

The tests share one cluster, relay and pair of peers, and run in order.
"""

from __future__ import annotations

import json
import os
import select
import sqlite3
import stat
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest

from client_sdk import AdminClient, CredentialBundle, KmsClient, RelayClient, write_profile
from client_sdk.device_keys import KEMS_BY_ALGORITHM
from client_sdk.messenger import Messenger, envelope_info, sign_envelope
from kms_gateway.devcluster import DevCluster
from keyrelay.v1 import messaging_pb2
from relay.devsetup import RelayProcess

pytestmark = pytest.mark.e2e

PEER_SCRIPT = Path(__file__).with_name("messaging_peer.py")
TENANT = "acme"
SEALING_ALIAS = "alias/directory"
REPLY_TIMEOUT = 60.0


class Peer:
    """A messaging_peer.py process: one JSON request a line in, one JSON reply a line out."""

    def __init__(self, name: str, profile: Path, root: Path) -> None:
        self.name = name
        self.stderr_path = root / f"{name}.stderr"
        self.device_file = root / f"{name}.keys"
        env = {**os.environ, "KEYRELAY_PEER_PASSPHRASE": f"{name}'s passphrase, {uuid.uuid4()}"}
        self.process = subprocess.Popen(
            [sys.executable, str(PEER_SCRIPT), str(profile), str(self.device_file)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr_path.open("w"),
            text=True, env=env, cwd=root,
        )

    def call(self, **request) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], REPLY_TIMEOUT)
        line = self.process.stdout.readline() if ready else ""
        assert line, f"{self.name} gave no reply to {request['op']}: {self.stderr_path.read_text()[-2000:]}"
        reply = json.loads(line)
        assert "error" not in reply, f"{self.name}: {reply}"
        return reply

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, e2e_tools):
    """One shared KMS node behind the gateway: sealing keys live on the shared pool, so the
    dedicated instance the cluster also prepares is not started."""
    cluster = DevCluster(tmp_path_factory.mktemp("cluster"), shared_replicas=1).prepare()
    try:
        cluster.start("shared-1", "gateway")
        yield cluster
    finally:
        cluster.stop("gateway", "shared-1")
        cluster.kill_all()


@pytest.fixture(scope="module")
def relay(tmp_path_factory, e2e_tools):
    relay = RelayProcess(tmp_path_factory.mktemp("relay")).start()
    yield relay
    relay.process.kill()


@pytest.fixture(scope="module")
def profiles(cluster, relay, tmp_path_factory) -> dict[str, Path]:
    """A profile per user: a credential of the tenant's messaging-user access point (allowed on the
    sealing key only), the gateway, and the relay. The sealing key is made by the tenant's admin."""
    root = tmp_path_factory.mktemp("users")
    files = cluster.admin_credentials()
    operator_credential = CredentialBundle.from_files(files["ca"], files["cert"], files["key"])
    with AdminClient(cluster.gateway_target, credentials=operator_credential, timeout=20) as operator:
        admin_point = operator.create_access_point(TENANT, "acme-admin", "admin", key_patterns=["*"])
        issued = operator.issue_credential(admin_point.access_point_id)
        admin = CredentialBundle(issued.ca_certificate_pem, issued.certificate_pem, issued.private_key_pem)
        with KmsClient(cluster.gateway_target, credentials=admin, timeout=20) as kms:
            kms.create_key(description="directory sealing key", alias=SEALING_ALIAS)
        point = operator.create_access_point(TENANT, "acme-messaging", "messaging-user", key_patterns=[SEALING_ALIAS])
        result = {}
        for user in ("alice", "bob", "mallory"):
            paths = operator.issue_credential(point.access_point_id, out_dir=root / user).files
            result[user] = write_profile(
                root / user / "profile.toml", cluster.gateway_target, paths["ca"], paths["cert"], paths["key"],
                relay_endpoint=relay.target,
            )
    return result


@pytest.fixture(scope="module")
def peers(profiles, tmp_path_factory):
    """Alice (hybrid ML-KEM-768+X25519) and Bob (X25519 until he re-registers), registered."""
    alice = Peer("alice", profiles["alice"], tmp_path_factory.mktemp("alice"))
    bob = Peer("bob", profiles["bob"], tmp_path_factory.mktemp("bob"))
    try:
        assert alice.call(op="register", user="alice", key_id=SEALING_ALIAS, kem="mlkem768-x25519") == {"bundle_version": 1}
        assert bob.call(op="register", user="bob", key_id=SEALING_ALIAS, kem="x25519") == {"bundle_version": 1}
        yield alice, bob
    finally:
        alice.close()
        bob.close()


class Mallory:
    """A registered user who forges envelopes to Bob and posts them through the relay as herself."""

    def __init__(self, profile: Path, root: Path) -> None:
        self.kms, self.relay = KmsClient(profile=profile), RelayClient(profile=profile)
        self.messenger = Messenger.register(
            self.kms, self.relay, "mallory", key_id=SEALING_ALIAS, device_file=root / "mallory.keys",
            passphrase="mallory's passphrase", kem="x25519",
        )

    def public_kem_key(self, user: str) -> tuple[int, int, object]:
        """(bundle version, KEM, public key) of `user`'s newest bundle, opened like any sender does."""
        bundle = messaging_pb2.PublicKeyBundle.FromString(
            self.kms.open_public_key(self.relay.get_record(user).sealed).public_key_bundle
        )
        kem = KEMS_BY_ALGORITHM[bundle.kem]
        return bundle.bundle_version, bundle.kem, kem.public_key(bundle.kem_public_key)

    def forge(self, text: str, *, claim: str = "mallory", seal_to: str = "bob", bad_signature: bool = False) -> str:
        """Post to Bob an envelope saying it is from `claim`, its content sealed to `seal_to`'s key."""
        version, kem, public = self.public_kem_key(seal_to)
        _, bob_kem, _ = self.public_kem_key("bob")
        assert kem == bob_kem  # so that only the decryption can tell the key apart
        signer = self.messenger.device.key_pair(self.messenger.bundle_version)
        body = messaging_pb2.EnvelopeBody(
            sender_user_id=claim, recipient_user_id="bob", message_id=uuid.uuid4().hex,
            sender_bundle_version=signer.bundle_version, recipient_bundle_version=version, kem=kem,
        )
        body.send_time.FromDatetime(datetime.now(timezone.utc))
        body.hpke_ciphertext = KEMS_BY_ALGORITHM[kem].suite.encrypt(text.encode(), public, info=envelope_info(body))
        signed = messaging_pb2.SignedEnvelope.FromString(sign_envelope(body, signer))
        if bad_signature:
            signed.signature = bytes(64 - len(b"forged")) + b"forged"
        return self.relay.send("bob", signed.SerializeToString(), client_message_id=body.message_id).message_id


@pytest.fixture(scope="module")
def mallory(profiles, tmp_path_factory):
    mallory = Mallory(profiles["mallory"], tmp_path_factory.mktemp("mallory"))
    yield mallory
    mallory.kms.close()
    mallory.relay.close()


def relay_envelopes(relay: RelayProcess, recipient: str) -> dict[str, messaging_pb2.EnvelopeBody]:
    """The bodies of the envelopes the relay holds for `recipient`, by client message id."""
    with sqlite3.connect(f"file:{relay.db}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT client_message_id, envelope FROM messages WHERE recipient = ? ORDER BY seq", (recipient,)
        ).fetchall()
    return {cid: messaging_pb2.EnvelopeBody.FromString(messaging_pb2.SignedEnvelope.FromString(e).body) for cid, e in rows}


def test_alice_and_bob_exchange_messages_and_forgeries_are_rejected(peers, mallory):
    alice, bob = peers
    alice.call(op="send", to="bob", text="hello bob", message_id="a-1")
    bob.call(op="send", to="alice", text="hello alice", message_id="b-1")
    assert bob.call(op="receive") == {
        "messages": [{"sender": "alice", "message_id": "a-1", "text": "hello bob",
                      "sender_bundle_version": 1, "recipient_bundle_version": 1}],
        "rejected": [],
    }
    assert [(m["sender"], m["text"]) for m in alice.call(op="receive")["messages"]] == [("bob", "hello alice")]

    forged = {
        mallory.forge("FORGED: pay mallory, signed alice", claim="alice"): "sender-mismatch",
        mallory.forge("FORGED: bad signature", bad_signature=True): "bad-signature",
        mallory.forge("FORGED: sealed to mallory", seal_to="mallory"): "undecryptable",
    }
    alice.call(op="send", to="bob", text="still genuine", message_id="a-2")

    got = bob.call(op="receive")
    assert [(m["sender"], m["text"]) for m in got["messages"]] == [("alice", "still genuine")]
    assert {r["relay_message_id"]: r["reason"] for r in got["rejected"]} == forged
    assert {r["sender"] for r in got["rejected"]} == {"mallory"}
    assert "FORGED" not in json.dumps(got["messages"])
    # Reported by Bob's process (its log), without the content.
    reported = [line for line in bob.stderr.splitlines() if "rejected message" in line]
    assert len(reported) == 3 and not any("FORGED" in line for line in reported)
    # Rejected envelopes were acknowledged: they do not block or come back.
    assert bob.call(op="receive") == {"messages": [], "rejected": []}
    # The private keys and the relay token stay in each device's own file, readable by its owner only.
    for peer in peers:
        assert stat.S_IMODE(peer.device_file.stat().st_mode) == 0o600


def test_after_bob_reregisters_alices_next_message_uses_his_new_key(peers, relay):
    alice, bob = peers
    alice.call(op="send", to="bob", text="in flight to key 1", message_id="a-3")  # Alice has key 1 cached
    assert bob.call(op="reregister", kem="mlkem768-x25519") == {"bundle_version": 2}
    alice.call(op="send", to="bob", text="after the rotation", message_id="a-4")

    held = relay_envelopes(relay, "bob")
    assert (held["a-3"].recipient_bundle_version, held["a-3"].kem) == (1, messaging_pb2.KEM_ALGORITHM_X25519)
    assert (held["a-4"].recipient_bundle_version, held["a-4"].kem) == (2, messaging_pb2.KEM_ALGORITHM_MLKEM768_X25519)

    got = bob.call(op="receive")
    assert got["rejected"] == []
    assert [(m["message_id"], m["text"], m["recipient_bundle_version"]) for m in got["messages"]] == [
        ("a-3", "in flight to key 1", 1),
        ("a-4", "after the rotation", 2),
    ]
    # Bob now signs with his version 2; Alice opens it to verify.
    bob.call(op="send", to="alice", text="from my new keys", message_id="b-2")
    [reply] = alice.call(op="receive")["messages"]
    assert (reply["text"], reply["sender_bundle_version"]) == ("from my new keys", 2)
