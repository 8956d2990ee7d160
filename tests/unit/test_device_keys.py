"""Unit tests of client_sdk/device_keys.py: the encrypted device file of a messaging user."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from client_sdk import device_keys
from client_sdk.device_keys import DeviceKeyPair, DeviceKeys, TokenLife, kem_spec
from foundation.errors import (
    AlreadyExistsError,
    CiphertextAuthenticationError,
    InvalidArgumentError,
    MalformedCiphertextError,
    NotFoundError,
)

PASSPHRASE = "correct horse battery staple"
TOKEN = "d3vice-t0ken-5ecret"
FAST = 2**14  # the smallest scrypt cost a file may have: keeps the tests quick


def make(path: Path, kem: str = "x25519", **kwargs) -> DeviceKeys:
    kwargs.setdefault("scrypt_n", FAST)
    return DeviceKeys.create(
        path, PASSPHRASE, user_id="alice", device_token=TOKEN, kms_key_id="key-1",
        key_pair=DeviceKeyPair.generate(1, kem), **kwargs,
    )


def secret_forms(pair: DeviceKeyPair) -> list[bytes]:
    forms = []
    for secret in (pair.kem_private_bytes, pair.signing_private_bytes):
        forms += [secret, secret.hex().encode(), base64.b64encode(secret)]
    return forms


@pytest.mark.parametrize("kem", ["mlkem768-x25519", "x25519"])
def test_round_trip_keeps_every_key_and_hpke_still_works(tmp_path, kem):
    path = tmp_path / "alice.keys"
    created = make(path, kem)
    loaded = DeviceKeys.load(path, PASSPHRASE)

    assert (loaded.user_id, loaded.device_token, loaded.kms_key_id) == ("alice", TOKEN, "key-1")
    assert loaded.bundle_versions == [1] and loaded.published_version == 0
    mine, theirs = created.key_pair(1), loaded.key_pair(1)
    assert (theirs.kem_private_bytes, theirs.signing_private_bytes) == (mine.kem_private_bytes, mine.signing_private_bytes)
    assert theirs.create_time == mine.create_time and theirs.kem_name == kem

    spec = kem_spec(kem)
    public = spec.public_key(mine.kem_public_bytes())
    assert len(mine.kem_public_bytes()) == spec.public_key_size
    ciphertext = spec.suite.encrypt(b"hello", public, info=b"i")
    assert spec.suite.decrypt(ciphertext, theirs.kem_private_key, info=b"i") == b"hello"
    bundle = theirs.public_bundle("alice")
    assert (bundle.user_id, bundle.bundle_version, bundle.kem) == ("alice", 1, spec.algorithm)
    assert bundle.signing_public_key == mine.signing_public_bytes()


def test_file_is_0600_json_with_its_parameters_and_no_secret_in_clear(tmp_path):
    path = tmp_path / "alice.keys"
    device = make(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    document = json.loads(path.read_text())
    assert document["format"] == "keyrelay.device-keys" and document["version"] == 1
    assert document["user_id"] == "alice"
    assert document["kdf"]["name"] == "scrypt"
    assert (document["kdf"]["n"], document["kdf"]["r"], document["kdf"]["p"]) == (FAST, 8, 1)
    assert len(base64.b64decode(document["kdf"]["salt"])) == 16
    assert document["aead"]["name"] == "AES-256-GCM" and len(base64.b64decode(document["aead"]["nonce"])) == 12
    raw = path.read_bytes()
    for secret in [TOKEN.encode(), PASSPHRASE.encode(), *secret_forms(device.key_pair(1))]:
        assert secret not in raw
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write left no temporary behind


def test_default_cost_is_scrypt_2_17(tmp_path):
    path = tmp_path / "alice.keys"
    make(path, scrypt_n=device_keys.SCRYPT_N)
    kdf = json.loads(path.read_text())["kdf"]
    assert (kdf["n"], kdf["r"], kdf["p"]) == (2**17, 8, 1)
    assert DeviceKeys.load(path, PASSPHRASE).user_id == "alice"


def test_wrong_passphrase_is_a_clear_error(tmp_path):
    path = tmp_path / "alice.keys"
    make(path)
    with pytest.raises(CiphertextAuthenticationError) as caught:
        DeviceKeys.load(path, "Correct horse battery staple")
    assert "wrong passphrase" in str(caught.value) and str(path) in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # no crypto internals chained
    assert PASSPHRASE not in str(caught.value)


def test_aad_binds_the_user_id(tmp_path):
    path = tmp_path / "alice.keys"
    make(path)
    document = json.loads(path.read_text())
    document["user_id"] = "mallory"
    path.write_text(json.dumps(document))
    with pytest.raises(CiphertextAuthenticationError):
        DeviceKeys.load(path, PASSPHRASE)


@pytest.mark.parametrize(
    "edit, error",
    [
        (lambda d: d.update(version=2), MalformedCiphertextError),
        (lambda d: d.update(format="something else"), MalformedCiphertextError),
        (lambda d: d["kdf"].update(n=2**30), MalformedCiphertextError),  # refused, not allocated
        (lambda d: d["kdf"].update(n=3 * 2**14), MalformedCiphertextError),
        (lambda d: d.update(ciphertext="***"), MalformedCiphertextError),
        (lambda d: d.update(ciphertext=base64.b64encode(b"x" * 40).decode()), CiphertextAuthenticationError),
    ],
)
def test_altered_files_fail_clearly(tmp_path, edit, error):
    path = tmp_path / "alice.keys"
    make(path)
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))
    with pytest.raises(error):
        DeviceKeys.load(path, PASSPHRASE)


def test_missing_garbage_existing_and_empty_passphrase(tmp_path):
    with pytest.raises(NotFoundError, match="no device file"):
        DeviceKeys.load(tmp_path / "nobody.keys", PASSPHRASE)
    (tmp_path / "garbage").write_text("not json")
    with pytest.raises(MalformedCiphertextError, match="not a keyrelay device file"):
        DeviceKeys.load(tmp_path / "garbage", PASSPHRASE)
    path = tmp_path / "alice.keys"
    make(path)
    before = path.read_bytes()
    with pytest.raises(AlreadyExistsError):
        make(path)
    assert path.read_bytes() == before  # never replaced
    with pytest.raises(InvalidArgumentError, match="passphrase is empty"):
        DeviceKeys.load(path, "")
    with pytest.raises(InvalidArgumentError, match="scrypt_n"):
        make(tmp_path / "weak.keys", scrypt_n=2**10)


def test_new_versions_keep_old_keys_and_merge_across_processes(tmp_path):
    path = tmp_path / "alice.keys"
    first = make(path)
    stale = DeviceKeys.load(path, PASSPHRASE)  # another process of the same device
    v2 = first.add_key_pair("mlkem768-x25519")
    v3 = stale.add_key_pair()  # re-reads under the lock: takes version 3, keeps version 2
    assert (v2.bundle_version, v3.bundle_version) == (2, 3)
    assert v3.kem_name == "mlkem768-x25519"  # the KEM of the newest version, as on disk
    stale.mark_published(3)
    first.mark_published(2)  # never moves backwards
    loaded = DeviceKeys.load(path, PASSPHRASE)
    assert loaded.bundle_versions == [1, 2, 3] and loaded.published_version == 3
    assert loaded.key_pair(2).kem_private_bytes == v2.kem_private_bytes
    assert loaded.key_pair(1).signing_private_bytes == first.key_pair(1).signing_private_bytes
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.with_name(".alice.keys.lock").stat().st_mode) == 0o600


def test_reprs_hold_no_secret(tmp_path):
    device = make(tmp_path / "alice.keys", "mlkem768-x25519")
    pair = device.key_pair(1)
    shown = repr(device) + repr(pair) + repr(kem_spec("x25519"))
    assert TOKEN not in shown and PASSPHRASE not in shown
    for form in secret_forms(pair):
        assert form.decode("latin-1") not in shown
    assert "bundle_versions=[1]" in repr(device)


def test_state_files_round_trip_encrypted_and_tolerate_damage(tmp_path):
    device = make(tmp_path / "alice.keys")
    assert device.load_seen() is None and device.load_peers() is None
    device.save_seen({"seen": [["bob", "m-1"]]}, 2)
    assert b"m-1" not in device.seen_path.read_bytes()
    assert stat.S_IMODE(device.seen_path.stat().st_mode) == 0o600
    assert DeviceKeys.load(device.path, PASSPHRASE).load_seen() == (2, {"seen": [["bob", "m-1"]]})
    document = json.loads(device.seen_path.read_text())
    document["version"] = 3  # the AAD binds the version: a file cannot be passed off as another
    device.seen_path.write_text(json.dumps(document))
    assert device.load_seen() is None
    device.seen_path.write_text("{broken")
    assert device.load_seen() is None


def test_the_seen_file_of_earlier_sdks_still_reads(tmp_path):
    device = make(tmp_path / "alice.keys")
    # Exactly what `save_seen` wrote before the messenger's state had versions of its own.
    nonce = b"\x01" * 12
    ciphertext = AESGCM(device._seen_key).encrypt(
        nonce, json.dumps([["bob", "m-1"]]).encode(), b"keyrelay.device-seen\x001\x00alice"
    )
    device.seen_path.write_text(json.dumps({
        "format": "keyrelay.device-seen", "version": 1,
        "nonce": base64.b64encode(nonce).decode(), "ciphertext": base64.b64encode(ciphertext).decode(),
    }))
    assert device.load_seen() == (1, [["bob", "m-1"]])


def test_peer_updates_from_two_processes_merge_under_the_lock(tmp_path):
    device = make(tmp_path / "alice.keys")
    other = DeviceKeys.load(device.path, PASSPHRASE)  # another process of the same device

    def add(name: str):
        def merge(stored):
            content = dict(stored[1]) if stored else {}
            content[name] = True
            return 1, content
        return merge

    assert device.update_peers(add("bob")) == (1, {"bob": True})
    assert other.update_peers(add("carol")) == (1, {"bob": True, "carol": True})
    assert device.load_peers() == (1, {"bob": True, "carol": True})
    assert b"carol" not in device.peers_path.read_bytes()
    assert stat.S_IMODE(device.peers_path.stat().st_mode) == 0o600


@given(issued=st.floats(0, 2e9), life=st.floats(1, 1e9), at=st.floats(0, 1))
def test_a_token_is_renewed_from_half_its_lifetime_on(issued, life, at):
    now = issued + at * life
    assert TokenLife(issued, issued + life).renewal_due(now) is (now >= issued + life / 2)
    assert TokenLife(issued, None).renewal_due(now) is False  # a token that never expires
    assert TokenLife(None, issued + life).renewal_due(now) is True  # a device file of before: learn it


def test_a_rotated_token_is_saved_and_read_by_other_processes(tmp_path):
    path = tmp_path / "d.keys"
    device = make(path)
    other = DeviceKeys.load(path, PASSPHRASE)
    assert other.token_life == TokenLife()  # made without token times, as earlier SDKs made files
    device.replace_device_token("krt_new", TokenLife(100.0, 200.0))
    again = DeviceKeys.load(path, PASSPHRASE)
    assert (again.device_token, again.token_life) == ("krt_new", TokenLife(100.0, 200.0))
    other.refresh()  # a process holding the file open takes the new token at its next reload
    assert other.device_token == "krt_new"
