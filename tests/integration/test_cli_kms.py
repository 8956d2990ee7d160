"""The `keyrelay` KMS commands (key, alias, encrypt, decrypt, datakey), run in-process through the
CLI's `main()` against a node on a real SoftHSM pool, reading a plain-text development profile."""

from __future__ import annotations

import base64
import io
import json
from typing import NamedTuple

import pytest

from client_sdk.cli import main

UNKNOWN_KEY = "00000000-0000-4000-8000-000000000000"


class Result(NamedTuple):
    status: int
    out: bytes
    err: str

    def json(self):
        assert self.status == 0, self.err
        return json.loads(self.out)


@pytest.fixture
def profile(served_node, tmp_path):
    path = tmp_path / "profile.toml"
    path.write_text(f'endpoint = "{served_node.target}"\ntenant = "acme"\ntimeout = 30\n')
    return path


@pytest.fixture
def cli(profile, monkeypatch, capsysbinary, tmp_path):
    """Run `keyrelay ARGV...` with stdin bytes; the default profile is the test node's."""
    monkeypatch.setenv("KEYRELAY_PROFILE", str(profile))
    monkeypatch.chdir(tmp_path)

    def run(*argv: str, stdin: bytes = b"") -> Result:
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        status = main(list(argv))
        captured = capsysbinary.readouterr()
        return Result(status, captured.out, captured.err.decode())

    return run


def test_key_lifecycle(cli, kms):
    key = cli("key", "create", "--description", "orders", "--alias", "alias/orders", "--tag", "team=shop",
              "-o", "json").json()
    key_id = key["key_id"]
    assert (key["state"], key["primary_version"], key["aliases"], key["tags"]) == (
        "ENABLED", 1, ["alias/orders"], {"team": "shop"}
    )
    assert key["create_time"].endswith("+00:00") and key["deletion_time"] is None
    assert kms.describe_key("alias/orders").key_id == key_id  # made in the profile's tenant

    assert cli("key", "describe", "alias/orders", "-o", "json").json()["key_id"] == key_id
    assert cli("key", "rotate", "alias/orders", "-o", "json").json()["versions"] == [1, 2]
    assert cli("key", "disable", key_id, "-o", "json").json()["state"] == "DISABLED"
    refused = cli("encrypt", "--key", key_id, stdin=b"x")
    assert refused.status == 1 and refused.err.startswith("keyrelay: KEY_DISABLED: ") and refused.out == b""
    assert cli("key", "enable", key_id, "-o", "json").json()["state"] == "ENABLED"

    scheduled = cli("key", "schedule-deletion", key_id, "--days", "7", "-o", "json").json()
    assert scheduled["state"] == "PENDING_DELETION" and scheduled["deletion_time"]
    assert cli("key", "cancel-deletion", key_id, "-o", "json").json()["state"] == "DISABLED"

    aliased = cli("alias", "create", "alias/shop", key_id, "-o", "json").json()
    assert aliased["aliases"] == ["alias/orders", "alias/shop"]
    assert cli("alias", "delete", "alias/orders", "-o", "json").json() == {"alias": "alias/orders", "key_id": key_id}
    gone = cli("key", "describe", "alias/orders")
    assert gone.status == 1 and "ALIAS_NOT_FOUND" in gone.err


def test_text_output_and_listing(cli):
    made = [cli("key", "create", "--description", f"k{i}", "-o", "json").json()["key_id"] for i in range(3)]
    described = cli("key", "describe", made[0])
    assert described.status == 0
    text = described.out.decode()
    assert f"key id                  {made[0]}" in text and "state                   ENABLED" in text

    first = cli("key", "list", "--page-size", "2")
    assert first.status == 0 and "--page-token" in first.err
    rows = first.out.decode().splitlines()
    assert rows[0].startswith("KEY ID") and len(rows) == 3
    page = cli("key", "list", "--page-size", "2", "-o", "json").json()
    assert len(page["keys"]) == 2 and page["next_page_token"]
    rest = cli("key", "list", "--page-token", page["next_page_token"], "-o", "json").json()
    assert [k["key_id"] for k in page["keys"] + rest["keys"]] == made
    everything = cli("key", "list", "--all", "--page-size", "1", "-o", "json").json()
    assert [k["key_id"] for k in everything["keys"]] == made and everything["next_page_token"] == ""


def test_encrypt_decrypt_round_trip_through_stdin_and_stdout(cli):
    cli("key", "create", "--alias", "alias/orders")
    plaintext = b"card 4111 1111\x00\xff"
    blob = cli("encrypt", "--key", "alias/orders", "--context", "order=42", stdin=plaintext)
    assert blob.status == 0 and blob.out[:1] == b"\x01"  # raw to a pipe
    opened = cli("decrypt", "--context", "order=42", stdin=blob.out)
    assert (opened.status, opened.out, opened.err) == (0, plaintext, "")

    text = cli("encrypt", "--key", "alias/orders", "--context", "order=42", "--base64", stdin=plaintext)
    assert text.out.endswith(b"\n") and base64.b64decode(text.out)[:1] == b"\x01"
    assert cli("decrypt", "--context", "order=42", "--key", "alias/orders", stdin=text.out).out == plaintext

    wrong = cli("decrypt", "--context", "order=43", stdin=blob.out)
    assert wrong.status == 1 and wrong.out == b""
    assert wrong.err.startswith("keyrelay: CIPHERTEXT_AUTHENTICATION_FAILED: ") and wrong.err.count("\n") == 1


def test_encrypt_decrypt_files_and_json(cli, tmp_path):
    key_id = cli("key", "create", "-o", "json").json()["key_id"]
    (tmp_path / "secret.txt").write_bytes(b"s3cret")
    assert cli("encrypt", "--key", key_id, "--in", "secret.txt", "--out", "secret.bin").status == 0
    assert cli("decrypt", "--in", "secret.bin", "--out", "plain.txt").status == 0
    assert (tmp_path / "plain.txt").read_bytes() == b"s3cret"

    sealed = cli("encrypt", "--key", key_id, "--context", "a=1", "-o", "json", stdin=b"hello").json()
    assert set(sealed) == {"key_id", "key_version", "ciphertext_blob"} and sealed["key_id"] == key_id
    opened = cli("decrypt", "--context", "a=1", "-o", "json", stdin=sealed["ciphertext_blob"].encode()).json()
    assert opened == {"key_id": key_id, "key_version": 1, "plaintext": base64.b64encode(b"hello").decode()}


def test_datakey(cli):
    cli("key", "create", "--alias", "alias/files")
    key = cli("datakey", "--key", "alias/files", "--context", "file=a.pdf", "-o", "json").json()
    dek = base64.b64decode(key["plaintext"])
    assert len(dek) == 32 and key["key_version"] == 1
    unwrapped = cli("decrypt", "--context", "file=a.pdf", stdin=key["ciphertext_blob"].encode())
    assert unwrapped.out == dek

    wrapped_only = cli("datakey", "--key", "alias/files", "--bytes", "16", "--no-plaintext", "-o", "json").json()
    assert wrapped_only["plaintext"] is None
    assert len(cli("decrypt", stdin=wrapped_only["ciphertext_blob"].encode()).out) == 16

    text = cli("datakey", "--key", "alias/files")
    assert text.status == 0 and text.err == ""  # stdout is no terminal: no warning
    fields = {line[:15].strip(): line[17:] for line in text.out.decode().splitlines()}  # labels, then values
    assert set(fields) == {"key id", "key version", "ciphertext blob", "plaintext"}
    assert len(base64.b64decode(fields["plaintext"])) == 32


def test_unknown_key_is_one_error_line(cli):
    for argv in (["key", "describe", UNKNOWN_KEY], ["key", "rotate", UNKNOWN_KEY], ["datakey", "--key", UNKNOWN_KEY]):
        result = cli(*argv)
        assert result.status == 1 and result.out == b""
        assert result.err.startswith("keyrelay: KEY_NOT_FOUND: ") and UNKNOWN_KEY in result.err
        assert result.err.count("\n") == 1 and "Traceback" not in result.err


def test_profile_and_endpoint_flags(cli, profile, served_node, monkeypatch, tmp_path):
    monkeypatch.delenv("KEYRELAY_PROFILE")
    missing = cli("key", "list")
    assert missing.status == 1 and missing.err.startswith("keyrelay: no profile at ")
    assert cli("key", "list", "--profile", str(profile)).status == 0
    # --endpoint with no profile anywhere: plain text to a development node (its default tenant).
    assert cli("key", "list", "--endpoint", served_node.target, "-o", "json").json()["keys"] == []
    (tmp_path / "quick.toml").write_text('endpoint = "127.0.0.1:1"\ntimeout = 2\n')
    down = cli("key", "list", "--profile", str(tmp_path / "quick.toml"))
    assert down.status == 1 and down.err.count("\n") == 1 and down.err.startswith("keyrelay: ")


def test_envelope_encrypts_and_decrypts_files_and_refuses_tampering(cli, kms, tmp_path):
    key = kms.create_key(alias="alias/backups")
    data = bytes(range(256)) * 9000  # 2.2 MiB: several 1 MiB chunks
    (tmp_path / "dump.sql").write_bytes(data)
    done = cli("envelope", "encrypt", "--key", "alias/backups", "--context", "host=db1", "--progress",
               "dump.sql", "dump.kre", "-o", "json")
    info = done.json()
    assert (info["key_id"], info["chunks"], info["plaintext_bytes"]) == (key.key_id, 3, len(data))
    assert "100%" in done.err and "MiB" in done.err  # the progress bar, on stderr
    envelope = (tmp_path / "dump.kre").read_bytes()
    assert data[:4096] not in envelope

    plain = cli("envelope", "decrypt", "--context", "host=db1", "--no-progress", "dump.kre", "restored.sql")
    assert plain.status == 0 and "plaintext bytes" in plain.out.decode()
    assert (tmp_path / "restored.sql").read_bytes() == data

    # To stdout: the data alone on stdout, the summary on stderr.
    piped = cli("envelope", "decrypt", "--context", "host=db1", "dump.kre", "-")
    assert piped.status == 0 and piped.out == data and "chunks" in piped.err

    # A wrong context, a flipped bit or a truncated envelope: one line, exit 1, nothing at OUT.
    (tmp_path / "flipped.kre").write_bytes(envelope[:-5000] + bytes([envelope[-5000] ^ 1]) + envelope[-4999:])
    (tmp_path / "short.kre").write_bytes(envelope[: len(envelope) // 2])
    for source, context, reason in (
        ("dump.kre", "host=db2", "CIPHERTEXT_AUTHENTICATION_FAILED"),
        ("flipped.kre", "host=db1", "CIPHERTEXT_AUTHENTICATION_FAILED"),
        ("short.kre", "host=db1", "CIPHERTEXT_AUTHENTICATION_FAILED"),
    ):
        failed = cli("envelope", "decrypt", "--context", context, source, "out.sql")
        assert failed.status == 1 and failed.err.startswith(f"keyrelay: {reason}") and failed.err.count("\n") == 1
        assert not (tmp_path / "out.sql").exists()
    same = cli("envelope", "encrypt", "--key", "alias/backups", "dump.sql", "dump.sql")
    assert same.status == 1 and "same file" in same.err
