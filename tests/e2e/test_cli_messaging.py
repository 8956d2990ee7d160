"""`keyrelay msg register|send|recv|rotate` through a real node process (SoftHSM) and a real relay
process, run in-process through the CLI's `main()` with one profile and two device files."""

from __future__ import annotations

import json
import time

import pytest

from client_sdk import KmsClient
from client_sdk.cli import main
from client_sdk.credentials import write_profile
from relay.devsetup import RelayProcess

pytestmark = pytest.mark.e2e


@pytest.fixture
def messaging(dev_pool, tmp_path, monkeypatch, capsys):
    node = dev_pool.start()
    relay = RelayProcess(tmp_path / "relay").start()
    profile = write_profile(tmp_path / "profile.toml", node.target, None, None, None, relay_endpoint=relay.target)
    # A plain-text development node takes the tenant from the profile (a top-level key).
    profile.write_text('tenant = "acme"\n' + profile.read_text())
    with KmsClient(profile=profile) as kms:
        kms.create_key(alias="alias/directory")
    monkeypatch.setenv("KEYRELAY_PROFILE", str(profile))
    monkeypatch.setenv("KEYRELAY_PASSPHRASE", "correct horse battery staple")
    monkeypatch.chdir(tmp_path)

    def run(*argv: str):
        status = main(list(argv))
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    yield run
    relay.process.kill()


def test_register_send_receive_and_rotate_from_the_command_line(messaging):
    for user in ("alice", "bob"):
        status, out, err = messaging("msg", "register", user, "--key", "alias/directory", "--kem", "x25519",
                                     "--device", f"{user}.keys")
        assert status == 0, err
        assert f"registered {user}" in out
    status, out, err = messaging("msg", "send", "bob", "lunch at 1?", "--device", "alice.keys")
    assert status == 0 and "sent to bob" in out, err

    status, out, err = messaging("msg", "recv", "--device", "bob.keys")
    assert status == 0, err
    assert out.endswith("alice: lunch at 1?\n")
    status, out, _ = messaging("msg", "recv", "--device", "bob.keys")
    assert (status, out) == (0, "")  # acknowledged: not shown twice

    # What a stranger writes cannot drive bob's terminal or fake a line of output.
    messaging("msg", "send", "bob", "hi\x1b[2J\nmallory: pay me", "--device", "alice.keys")
    status, out, _ = messaging("msg", "recv", "--device", "bob.keys")
    assert status == 0 and out.endswith("alice: hi\\x1b[2J\\nmallory: pay me\n") and "\x1b" not in out

    status, out, err = messaging("msg", "rotate", "--device", "bob.keys", "-o", "json")
    assert status == 0 and json.loads(out)["bundle_version"] == 2, err
    messaging("msg", "send", "bob", "after the rotation", "--device", "alice.keys")
    status, out, _ = messaging("msg", "recv", "--device", "bob.keys", "-o", "json")
    received = json.loads(out)
    assert (received["sender"], received["text"], received["recipient_bundle_version"]) == ("alice", "after the rotation", 2)


def test_errors_are_one_line(messaging, monkeypatch):
    assert messaging("msg", "register", "alice", "--key", "alias/directory", "--kem", "x25519", "--device", "a.keys")[0] == 0
    monkeypatch.setenv("KEYRELAY_PASSPHRASE", "tr0ub4dor-guess")
    status, out, err = messaging("msg", "send", "bob", "hi", "--device", "a.keys")
    assert status == 1 and err.startswith("keyrelay: ") and err.count("\n") == 1
    assert "wrong passphrase" in err and "tr0ub4dor" not in err
    monkeypatch.setenv("KEYRELAY_PASSPHRASE", "correct horse battery staple")
    status, _, err = messaging("msg", "send", "nobody", "hi", "--device", "a.keys")
    assert status == 1 and "USER_NOT_FOUND" in err and err.count("\n") == 1
    status, _, err = messaging("msg", "register", "Not Valid", "--key", "alias/directory", "--device", "b.keys")
    assert status == 1 and "INVALID_USER_ID" in err


def test_device_tokens_rotate_by_hand_by_themselves_and_are_revoked(messaging, tmp_path):
    """`msg rotate-token` saves a new token and the old one stops working; a device past half of
    its token's lifetime rotates when it is opened; `msg revoke-token` signs the device out."""
    from client_sdk import DeviceTokenRevokedError, Messenger, RelayClient
    from client_sdk.credentials import load_profile
    from client_sdk.device_keys import DeviceKeys

    passphrase = "correct horse battery staple"
    assert messaging("msg", "register", "alice", "--key", "alias/directory", "--kem", "x25519", "--device", "a.keys")[0] == 0
    first = DeviceKeys.load(tmp_path / "a.keys", passphrase)
    assert first.token_life.expire_time - first.token_life.issue_time == pytest.approx(180 * 86400, abs=5)

    status, out, err = messaging("msg", "rotate-token", "--revoke-previous", "--device", "a.keys")
    assert status == 0 and "new relay device token saved" in out and "previous one revoked" in out, err
    second = DeviceKeys.load(tmp_path / "a.keys", passphrase)
    assert second.device_token != first.device_token and first.device_token not in out + err
    profile = load_profile(None)
    with RelayClient(profile=profile, device_token=first.device_token) as stale:
        with pytest.raises(DeviceTokenRevokedError):
            stale.send("alice", b"with the old token")
    assert messaging("msg", "send", "alice", "to myself", "--device", "a.keys")[0] == 0

    # 100 days on, the device is past half of its token's lifetime: opening it rotates the token.
    with KmsClient(profile=profile) as kms, RelayClient(profile=profile) as relay:
        later = Messenger.open(kms, relay, tmp_path / "a.keys", passphrase,
                               wall_clock=lambda: time.time() + 100 * 86400)
        assert later.device.device_token != second.device_token
    assert DeviceKeys.load(tmp_path / "a.keys", passphrase).device_token == later.device.device_token

    status, out, err = messaging("msg", "revoke-token", "--device", "a.keys")
    assert status == 0 and "1 relay device token(s) revoked" in out, err
    status, _, err = messaging("msg", "send", "alice", "after sign-out", "--device", "a.keys")
    assert status == 1 and "DEVICE_TOKEN_REVOKED" in err and "issue-token" in err
