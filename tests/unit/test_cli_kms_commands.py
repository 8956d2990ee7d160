"""Unit tests of the KMS commands (client_sdk/cli/key_commands.py, crypto_commands.py) and of the
conventions they share (client_sdk/cli/_output.py): parsing, --help, output formats, error lines
and exit statuses. A fake KmsClient stands in for the server (no sockets)."""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
from datetime import datetime, timedelta, timezone

from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

import client_sdk as kr
from client_sdk.cli import _output as output
from client_sdk.cli import crypto_commands, key_commands
from client_sdk.cli.crypto_commands import decode_blob
from client_sdk.cli.key_commands import DeletedAlias, format_text

T0 = datetime(2025, 3, 1, 12, 30, 5, tzinfo=timezone.utc)
KEY_ID = "1b4e28ba-2fa1-4d3e-9a6f-1e0c2a7b5d10"
KEY = kr.KeyMetadata(
    KEY_ID, "acme", "orders", {"team": "shop", "env": "prod"}, "ENABLED", "", 2, 1, T0, None,
    ("alias/orders",), (1, 2),
)
DEDICATED = kr.KeyMetadata(
    "9d6a0c1e-0000-4000-8000-000000000001", "acme", "", {}, "PENDING_DELETION", "dev-dedicated", 1, 1, T0,
    T0 + timedelta(days=7), (), (1,),
)
BLOB = b"\x01" + bytes(range(60))  # a raw blob starts with its format byte
PLAINTEXT = b"card 4111\x00\xff"
DEK = bytes(range(32))

COMMANDS = [
    ["key"], ["key", "create"], ["key", "list"], ["key", "describe"], ["key", "enable"], ["key", "disable"],
    ["key", "rotate"], ["key", "schedule-deletion"], ["key", "cancel-deletion"],
    ["alias"], ["alias", "create"], ["alias", "delete"],
    ["encrypt"], ["decrypt"], ["datakey"],
]


@pytest.fixture
def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keyrelay")
    commands = parser.add_subparsers(dest="command", required=True)
    key_commands.register(commands)
    crypto_commands.register(commands)
    return parser


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(parser, capsys, command):
    with pytest.raises(SystemExit) as exit:
        parser.parse_args([*command, "--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    assert "Example" in out and "keyrelay " + " ".join(command) in out
    if len(command) == 2 or command[0] in ("encrypt", "decrypt", "datakey"):
        for option in ("--profile", "--endpoint", "--output"):
            assert option in out


# -- parsing -------------------------------------------------------------------------------------


def test_key_create_collects_tags(parser):
    args = parser.parse_args(
        "key create --description orders --alias alias/orders --tag team=shop --tag note=a=b --instance dev-dedicated "
        "--profile p.toml -o json".split()
    )
    assert (args.description, args.alias, args.instance) == ("orders", "alias/orders", "dev-dedicated")
    assert args.tags == {"team": "shop", "note": "a=b"}
    assert (args.profile, args.endpoint, args.output) == ("p.toml", None, "json")
    defaults = parser.parse_args(["key", "create"])
    assert (defaults.description, defaults.alias, defaults.tags, defaults.instance) == ("", "", {}, "")
    assert (defaults.profile, defaults.endpoint, defaults.output) == (None, None, "text")


def test_crypto_commands_parse(parser):
    args = parser.parse_args(
        "encrypt --key alias/a --context order=42 --context empty= --in p.txt --out c.bin --base64".split()
    )
    assert (args.key, args.context, args.input, args.out, args.base64) == (
        "alias/a", {"order": "42", "empty": ""}, "p.txt", "c.bin", True
    )
    args = parser.parse_args("decrypt".split())
    assert (args.key, args.context, args.input, args.out) == ("", {}, None, None)
    args = parser.parse_args("datakey --key k --bytes 64 --no-plaintext".split())
    assert (args.key, args.bytes, args.no_plaintext, args.context) == ("k", 64, True, {})
    assert parser.parse_args("datakey --key k".split()).bytes == 32


def test_list_and_schedule_options(parser):
    assert parser.parse_args("key list".split()).all is False
    args = parser.parse_args("key list --page-token t1 --page-size 5".split())
    assert (args.page_token, args.page_size) == ("t1", 5)
    assert parser.parse_args("key schedule-deletion k --days 7".split()).days == 7
    assert parser.parse_args("key schedule-deletion k".split()).days == 0  # the server's default, 30
    alias = parser.parse_args(["alias", "create", "alias/a", KEY_ID])
    assert (alias.alias, alias.key) == ("alias/a", KEY_ID)


@pytest.mark.parametrize(
    "argv, flag",
    [
        ("encrypt --key k --context order", "--context"),
        ("encrypt --key k --context =42", "--context"),
        ("decrypt --context a=1 --context a=2", "--context"),
        ("key create --tag team", "--tag"),
        ("encrypt --context a=1", "--key"),
        ("key schedule-deletion k --days 3", "--days"),
        ("key schedule-deletion k --days soon", "--days"),
        ("key list --all --page-token t", "--page-token"),
        ("key list --page-size 0", "--page-size"),
        ("datakey --key k --bytes 24", "--bytes"),
        ("key describe", "KEY"),
        ("key list --output yaml", "--output"),
    ],
)
def test_usage_errors_exit_2_naming_the_flag(parser, capsys, argv, flag):
    with pytest.raises(SystemExit) as exit:
        parser.parse_args(argv.split())
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and flag in err


# -- output --------------------------------------------------------------------------------------


def test_key_text_output_says_what_empty_values_mean():
    text = format_text(KEY)
    assert f"key id                  {KEY_ID}" in text
    assert "tags                    env=prod, team=shop" in text
    assert "instance id             (shared KMS)" in text
    assert "deletion time           (not scheduled)" in text
    assert "create time             2025-03-01 12:30:05Z" in text
    assert "versions                1, 2" in text
    other = format_text(DEDICATED)
    assert "aliases                 (none)" in other and "deletion time           2025-03-08 12:30:05Z" in other


def test_key_list_is_a_table():
    rows = format_text(kr.KeyPage([KEY, DEDICATED], "")).splitlines()
    assert rows[0].split()[:4] == ["KEY", "ID", "STATE", "VERSION"]
    assert rows[1].startswith(KEY_ID) and "alias/orders" in rows[1] and "(shared)" in rows[1]
    assert "dev-dedicated" in rows[2] and rows[2].index("PENDING_DELETION") == rows[0].index("STATE")
    assert format_text(kr.KeyPage([], "")) == "(none)"
    assert format_text(DeletedAlias("alias/a", KEY_ID)) == f"deleted alias/a (it pointed to key {KEY_ID})"


def test_json_has_stable_keys_iso_utc_datetimes_and_base64_bytes():
    data = json.loads(output.format_json(KEY))
    assert set(data) == {f for f in kr.KeyMetadata.__dataclass_fields__}
    assert data["create_time"] == "2025-03-01T12:30:05+00:00" and data["deletion_time"] is None
    assert data["tags"] == {"team": "shop", "env": "prod"} and data["versions"] == [1, 2]
    page = json.loads(output.format_json(kr.KeyPage([KEY], "")))
    assert page["next_page_token"] == "" and page["keys"][0]["key_id"] == KEY_ID
    plus_two = timezone(timedelta(hours=2))
    assert output.to_plain(datetime(2025, 3, 1, 14, 30, tzinfo=plus_two)) == "2025-03-01T12:30:00+00:00"
    assert output.to_plain({"blob": BLOB}) == {"blob": base64.b64encode(BLOB).decode()}


def test_hidden_fields_stay_hidden_from_json():
    assert "plaintext" not in output.to_plain(kr.DecryptResult(PLAINTEXT, KEY_ID, 1))
    assert "plaintext" not in output.to_plain(kr.DataKey(DEK, BLOB, KEY_ID, 1))


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error, line",
    [
        (kr.KeyNotFoundError("no key alias/x in tenant acme", request_id="r-1"),
         "KEY_NOT_FOUND: no key alias/x in tenant acme [request id r-1]"),
        (kr.KeyDisabledError("key k is\ndisabled"), "KEY_DISABLED: key k is disabled"),
        (kr.KeyrelayError("something odd"), "something odd"),
        (kr.ProfileError("no profile at x.toml"), "no profile at x.toml"),
        (FileNotFoundError(2, "No such file or directory", "in.txt"), "in.txt: No such file or directory"),
        (output.CliError("no ciphertext blob on input"), "no ciphertext blob on input"),
    ],
)
def test_error_line(error, line):
    assert output.error_line(error) == line


def _raising(error: BaseException):
    def command(args):
        raise error

    return output.guarded(command)


def test_guarded_prints_one_line_and_exits_1(capsys):
    assert _raising(kr.KeyNotFoundError("no key k"))(argparse.Namespace()) == 1
    captured = capsys.readouterr()
    assert captured.err == "keyrelay: KEY_NOT_FOUND: no key k\n" and captured.out == ""


def test_ctrl_c_exits_130_quietly(capsys):
    assert _raising(KeyboardInterrupt())(argparse.Namespace()) == 130
    assert capsys.readouterr() == ("", "")


def test_a_closed_pipe_is_quiet(capsys, monkeypatch):
    silenced = []
    monkeypatch.setattr(output, "_silence_stdout", lambda: silenced.append(True))
    assert _raising(BrokenPipeError(32, "Broken pipe"))(argparse.Namespace()) == 1
    assert capsys.readouterr().err == "" and silenced == [True]


def test_unexpected_errors_are_not_hidden():
    with pytest.raises(ZeroDivisionError):
        _raising(ZeroDivisionError())(argparse.Namespace())


# -- running against a fake client ---------------------------------------------------------------


RESULTS = {
    "create_key": KEY,
    "describe_key": KEY,
    "schedule_key_deletion": DEDICATED,
    "list_keys": kr.KeyPage([KEY], "next-1"),
    "delete_alias": KEY_ID,
    "encrypt": kr.EncryptResult(BLOB, KEY_ID, 2),
    "decrypt": kr.DecryptResult(PLAINTEXT, KEY_ID, 2),
    "generate_data_key": kr.DataKey(DEK, BLOB, KEY_ID, 2),
    "generate_data_key_without_plaintext": kr.DataKey(b"", BLOB, KEY_ID, 2),
}


def fake_kms(error: Exception | None = None) -> mock.MagicMock:
    """A stand-in KmsClient: its methods answer RESULTS (iter_keys: KEY, DEDICATED), or raise `error`."""
    kms = mock.MagicMock(name="kms")
    kms.__enter__.return_value = kms
    for name, result in RESULTS.items():
        getattr(kms, name).side_effect = error or (lambda *a, result=result, **k: result)
    kms.iter_keys.side_effect = error or (lambda **k: iter([KEY, DEDICATED]))
    return kms


@pytest.fixture
def stdin(monkeypatch):
    """Set what the command reads from stdin (bytes)."""

    def feed(data: bytes) -> None:
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))

    feed(b"")
    return feed


def run(parser, monkeypatch, argv: list[str] | str, kms: mock.MagicMock, *, terminal: bool = False) -> int:
    monkeypatch.setattr(output, "connect", lambda client_class, args: kms)
    monkeypatch.setattr(output, "_is_terminal", lambda stream: terminal)
    args = parser.parse_args(argv.split() if isinstance(argv, str) else argv)
    return args.func(args)


def test_key_commands_call_the_client(parser, monkeypatch, capsys):
    kms = fake_kms()
    assert run(parser, monkeypatch, "key create --description orders --tag team=shop --alias alias/o", kms) == 0
    assert kms.method_calls[-1] == mock.call.create_key(
        description="orders", tags={"team": "shop"}, alias="alias/o", instance_id=""
    )
    assert KEY_ID in capsys.readouterr().out
    assert run(parser, monkeypatch, "key schedule-deletion alias/o --days 7 -o json", kms) == 0
    assert kms.method_calls[-1] == mock.call.schedule_key_deletion("alias/o", pending_window_days=7)
    assert json.loads(capsys.readouterr().out)["state"] == "PENDING_DELETION"
    assert run(parser, monkeypatch, "alias delete alias/o -o json", kms) == 0
    assert json.loads(capsys.readouterr().out) == {"alias": "alias/o", "key_id": KEY_ID}


def test_key_list_pages(parser, monkeypatch, capsys):
    kms = fake_kms()
    assert run(parser, monkeypatch, "key list --page-size 1", kms) == 0
    assert kms.method_calls[-1] == mock.call.list_keys(page_size=1, page_token="")
    captured = capsys.readouterr()
    assert KEY_ID in captured.out and "--page-token next-1" in captured.err
    assert run(parser, monkeypatch, "key list --all -o json", kms) == 0
    assert kms.method_calls[-1] == mock.call.iter_keys(page_size=0)
    data = json.loads(capsys.readouterr().out)
    assert len(data["keys"]) == 2 and data["next_page_token"] == ""


def test_encrypt_writes_a_raw_blob_to_a_pipe(parser, monkeypatch, capsysbinary, stdin):
    stdin(PLAINTEXT)
    kms = fake_kms()
    assert run(parser, monkeypatch, "encrypt --key alias/o --context order=42", kms) == 0
    assert kms.method_calls == [mock.call.encrypt("alias/o", PLAINTEXT, context={"order": "42"})]
    assert capsysbinary.readouterr().out == BLOB


def test_encrypt_writes_base64_to_a_terminal_or_when_asked(parser, monkeypatch, capsysbinary, stdin):
    line = base64.b64encode(BLOB) + b"\n"
    stdin(PLAINTEXT)
    assert run(parser, monkeypatch, "encrypt --key k", fake_kms(), terminal=True) == 0
    captured = capsysbinary.readouterr()
    assert captured.out == line and b"Ctrl-D" in captured.err  # stdin is a terminal too
    stdin(PLAINTEXT)
    assert run(parser, monkeypatch, "encrypt --key k --base64", fake_kms()) == 0
    assert capsysbinary.readouterr().out == line


def test_encrypt_files_and_json(parser, monkeypatch, capsysbinary, tmp_path):
    (tmp_path / "p.txt").write_bytes(PLAINTEXT)
    out = tmp_path / "c.bin"
    argv = ["encrypt", "--key", "k", "--in", str(tmp_path / "p.txt"), "--out", str(out)]
    assert run(parser, monkeypatch, argv, fake_kms(), terminal=True) == 0  # a file is never a terminal
    assert out.read_bytes() == BLOB and os.stat(out).st_mode & 0o777 == 0o600
    assert capsysbinary.readouterr().out == b""
    assert run(parser, monkeypatch, argv[:5] + ["-o", "json"], fake_kms()) == 0
    data = json.loads(capsysbinary.readouterr().out)
    assert data == {"key_id": KEY_ID, "key_version": 2, "ciphertext_blob": base64.b64encode(BLOB).decode()}


def test_decrypt_reads_raw_or_base64(parser, monkeypatch, capsysbinary, stdin):
    for given in (BLOB, base64.b64encode(BLOB) + b"\n", base64.encodebytes(BLOB * 3)):
        stdin(given)
        kms = fake_kms()
        assert run(parser, monkeypatch, "decrypt --context order=42 --key alias/o", kms) == 0
        expected = BLOB * 3 if len(given) > 100 else BLOB
        assert kms.method_calls == [mock.call.decrypt(expected, context={"order": "42"}, key_id="alias/o")]
        assert capsysbinary.readouterr().out == PLAINTEXT
    stdin(BLOB)
    assert run(parser, monkeypatch, "decrypt -o json", fake_kms()) == 0
    data = json.loads(capsysbinary.readouterr().out)
    assert data == {"key_id": KEY_ID, "key_version": 2, "plaintext": base64.b64encode(PLAINTEXT).decode()}


@pytest.mark.parametrize("given", [b"", b" \n", b"not base64!", b"QUJD=x"])
def test_decode_blob_refuses_what_is_no_blob(given):
    with pytest.raises(output.CliError):
        decode_blob(given)


def test_decode_blob_keeps_raw_bytes_whole():
    blob = b"\x01" + b"abc \n"  # trailing bytes that look like white space stay
    assert decode_blob(blob) == blob


def test_input_over_the_limit_is_one_error_line(parser, monkeypatch, capsys, stdin):
    stdin(b"x" * (crypto_commands.MAX_INPUT_BYTES + 1))
    kms = fake_kms()
    assert run(parser, monkeypatch, "encrypt --key k", kms) == 1
    assert capsys.readouterr().err == (
        "keyrelay: the plaintext in standard input is over 65536 bytes, more than this command takes\n"
    )
    assert kms.method_calls == []


def test_missing_input_file_is_one_error_line(parser, monkeypatch, capsys, tmp_path):
    assert run(parser, monkeypatch, ["decrypt", "--in", str(tmp_path / "none.bin")], fake_kms()) == 1
    assert capsys.readouterr().err == f"keyrelay: {tmp_path / 'none.bin'}: No such file or directory\n"


def test_datakey_output(parser, monkeypatch, capsys):
    kms = fake_kms()
    assert run(parser, monkeypatch, "datakey --key k --context f=a --bytes 16", kms) == 0
    assert kms.method_calls == [mock.call.generate_data_key("k", number_of_bytes=16, context={"f": "a"})]
    captured = capsys.readouterr()
    assert f"plaintext        {base64.b64encode(DEK).decode()}" in captured.out
    assert f"ciphertext blob  {base64.b64encode(BLOB).decode()}" in captured.out
    assert captured.err == ""  # not a terminal: no warning

    assert run(parser, monkeypatch, "datakey --key k", kms, terminal=True) == 0
    assert "keyrelay: warning: printing a plaintext data key" in capsys.readouterr().err

    assert run(parser, monkeypatch, "datakey --key k --no-plaintext -o json", kms, terminal=True) == 0
    assert kms.method_calls[-1][0] == "generate_data_key_without_plaintext"
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {
        "key_id": KEY_ID, "key_version": 2, "ciphertext_blob": base64.b64encode(BLOB).decode(), "plaintext": None
    }
    assert captured.err == ""
    assert run(parser, monkeypatch, "datakey --key k --no-plaintext", kms) == 0
    assert "plaintext" not in capsys.readouterr().out.replace("ciphertext", "")


def test_server_errors_are_one_line(parser, monkeypatch, capsysbinary, stdin):
    stdin(BLOB)
    error = kr.CiphertextAuthenticationError("the ciphertext did not authenticate", request_id="r-9")
    assert run(parser, monkeypatch, "decrypt --context order=43", fake_kms(error)) == 1
    captured = capsysbinary.readouterr()
    assert captured.out == b""
    assert captured.err == (
        b"keyrelay: CIPHERTEXT_AUTHENTICATION_FAILED: the ciphertext did not authenticate [request id r-9]\n"
    )


def test_missing_profile_is_one_error_line(parser, capsys, tmp_path):
    args = parser.parse_args(["key", "list", "--profile", str(tmp_path / "none.toml")])
    assert args.func(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("keyrelay: no profile at") and err.count("\n") == 1


@given(st.text())
def test_text_from_others_reaches_the_terminal_escaped(text):
    shown = output.terminal_safe(text)
    assert all(char == "\t" or char.isprintable() for char in shown)
    assert "\x1b" not in shown and "\n" not in shown and "\u202e" not in shown
    if text.isprintable():
        assert shown == text


def test_a_message_with_escape_sequences_is_shown_escaped():
    assert output.terminal_safe("hi\x1b[2J\x1b]0;owned\x07\nfake line\u202e") == (
        "hi\\x1b[2J\\x1b]0;owned\\x07\\nfake line\\u202e"
    )
