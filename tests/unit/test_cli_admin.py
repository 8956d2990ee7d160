"""Unit tests of client_sdk/cli/admin_commands.py: parsing, --help, output formats and error lines
(a fake AdminClient stands in for the gateway)."""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import client_sdk as kr
from client_sdk.cli import admin_commands
from client_sdk.cli.admin_commands import format_json, format_record, format_table, format_text

T0 = datetime(2025, 3, 1, 12, 30, 5, tzinfo=timezone.utc)
INSTANCE = kr.Instance("dev-dedicated", "acme", ("n1:7211", "n2:7211"), "127.0.0.1:7202", (), False, T0)
ACCESS_POINT = kr.AccessPoint("ap-1", "acme", "orders-app", ("crypto-user",), (), ("internal",), (), T0)
FAR = datetime(2999, 1, 1, tzinfo=timezone.utc)
CREDENTIAL = kr.Credential("0a1b", "ap-1", T0, FAR, False, None, "f" * 64)
REVOKED = kr.Credential("0c", "ap-1", T0, T0 + timedelta(days=90), True, T0 + timedelta(days=1), "e" * 64)
PRIVATE_KEY = b"-----BEGIN PRIVATE KEY-----\nTOP-SECRET\n-----END PRIVATE KEY-----\n"

COMMANDS = [
    ["instance"],
    ["instance", "register"],
    ["instance", "list"],
    ["instance", "describe"],
    ["access-point"],
    ["access-point", "create"],
    ["access-point", "list"],
    ["access-point", "describe"],
    ["access-point", "delete"],
    ["credential"],
    ["credential", "issue"],
    ["credential", "list"],
    ["credential", "revoke"],
]


@pytest.fixture
def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keyrelay")
    admin_commands.register(parser.add_subparsers(dest="command", required=True))
    return parser


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(parser, capsys, command):
    with pytest.raises(SystemExit) as exit:
        parser.parse_args([*command, "--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    assert "Example:" in out and "keyrelay " + command[0] in out
    if len(command) == 2:
        for option in ("--profile", "--endpoint", "--output"):
            assert option in out


def test_instance_register(parser):
    args = parser.parse_args(
        "instance register dev-dedicated --tenant acme --node n1:1 --node n2:1 --private-endpoint p:2 "
        "--zone internal --allow-public-crypto".split()
    )
    assert (args.instance_id, args.tenant, args.nodes, args.private_endpoint) == ("dev-dedicated", "acme", ["n1:1", "n2:1"], "p:2")
    assert args.zones == ["internal"] and args.allow_public_crypto
    assert (args.profile, args.endpoint, args.output) == (None, None, "text")


def test_access_point_create_with_repeated_options(parser):
    args = parser.parse_args(
        ["access-point", "create", "app", "--tenant", "acme", "--role", "messaging-user", "--key", "alias/a-*",
         "--key", "k1", "--zone", "z", "--cidr", "10.0.0.0/8", "--cidr", "::1/128",
         "--profile", "p.toml", "--endpoint", "gw:1", "-o", "json"]
    )
    assert (args.name, args.tenant, args.roles, args.operator) == ("app", "acme", ["messaging-user"], False)
    assert (args.keys, args.zones, args.cidrs) == (["alias/a-*", "k1"], ["z"], ["10.0.0.0/8", "::1/128"])
    assert (args.profile, args.endpoint, args.output) == ("p.toml", "gw:1", "json")
    defaults = parser.parse_args("access-point create app --tenant acme --role admin".split())
    assert (defaults.keys, defaults.zones, defaults.cidrs) == ([], [], [])
    several = parser.parse_args("access-point create app --tenant t --role key-admin --role access-admin --operator".split())
    assert (several.roles, several.operator) == (["key-admin", "access-admin"], True)


def test_credential_commands(parser):
    issue = parser.parse_args("credential issue ap-1 --out dir --days 30".split())
    assert (issue.access_point_id, issue.out, issue.days) == ("ap-1", "dir", 30)
    assert parser.parse_args("credential issue ap-1 --out dir".split()).days == 0
    assert parser.parse_args("credential revoke 0a1b".split()).serial == "0a1b"
    assert parser.parse_args("credential list ap-1".split()).access_point_id == "ap-1"


@pytest.mark.parametrize(
    "argv",
    [
        "instance register i1 --tenant acme --private-endpoint p:2",  # no --node
        "access-point create app --tenant acme --role owner",
        "access-point create app --role admin",
        "access-point list",
        "credential issue ap-1",  # no --out
        "credential issue ap-1 --out d --days 400",
        "credential issue ap-1 --out d --days many",
        "instance list --output yaml",
    ],
)
def test_bad_arguments_exit_2(parser, capsys, argv):
    with pytest.raises(SystemExit) as exit:
        parser.parse_args(argv.split())
    assert exit.value.code == 2
    assert "error:" in capsys.readouterr().err


# -- output --------------------------------------------------------------------------------------


def test_tables_are_aligned_with_headers():
    table = format_table([INSTANCE, INSTANCE], kr.Instance).splitlines()
    assert table[0].split()[:2] == ["INSTANCE", "TENANT"]
    assert "n1:7211, n2:7211" in table[1] and "2025-03-01 12:30:05Z" in table[1]
    assert table[1].index("acme") == table[0].index("TENANT")
    assert format_text([]) == "(none)"
    credentials = format_text([CREDENTIAL, REVOKED]).splitlines()
    assert "active" in credentials[1] and "revoked" in credentials[2]


def test_credential_status():
    assert CREDENTIAL.status() == "active"
    assert CREDENTIAL.status(FAR) == "expired"
    assert REVOKED.status(T0) == "revoked"


def test_records_say_what_empty_lists_mean():
    text = format_record(ACCESS_POINT)
    assert "key patterns     (no key)" in text
    assert "allowed zones    internal" in text
    assert "allowed cidrs    (any)" in text
    assert "roles            crypto-user" in text
    assert "status" in format_record(REVOKED) and "revoked" in format_record(REVOKED)


def test_json_is_machine_readable_with_iso_datetimes():
    data = json.loads(format_json([INSTANCE]))
    assert data[0]["create_time"] == "2025-03-01T12:30:05+00:00"
    assert data[0]["node_endpoints"] == ["n1:7211", "n2:7211"]
    assert json.loads(format_json(REVOKED))["status"] == "revoked"
    assert json.loads(format_json(REVOKED))["revoke_time"] == "2025-03-02T12:30:05+00:00"


def _issued(tmp_path: Path) -> kr.IssuedCredential:
    files = {name: tmp_path / f"ap-1.{name}" for name in ("cert", "key", "ca", "profile")}
    return kr.IssuedCredential(CREDENTIAL, b"CERT", b"CA", PRIVATE_KEY, files)


def test_issued_credential_output_never_shows_the_private_key(tmp_path):
    issued = _issued(tmp_path)
    text = format_text(issued)
    assert "issued credential 0a1b to access point ap-1" in text
    assert str(tmp_path / "ap-1.key") in text and "0600" in text
    assert f"KEYRELAY_PROFILE={tmp_path / 'ap-1.profile'}" in text
    data = json.loads(format_json(issued))
    assert data["files"]["key"] == str(tmp_path / "ap-1.key")
    assert data["credential"]["serial"] == "0a1b"
    for output in (text, format_json(issued)):
        assert "TOP-SECRET" not in output


# -- running -------------------------------------------------------------------------------------


class FakeAdmin:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls = []

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return None

    def __getattr__(self, name):
        def call(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            if self.error:
                raise self.error
            return {
                "iter_instances": iter([INSTANCE]),
                "create_access_point": ACCESS_POINT,
                "delete_access_point": None,
                "issue_credential": None,
            }[name]

        return call


def run(parser, monkeypatch, argv: str, admin: FakeAdmin) -> int:
    monkeypatch.setattr(admin_commands, "_connect", lambda args: admin)
    args = parser.parse_args(argv.split())
    return args.func(args)


def test_commands_call_the_client_and_print(parser, monkeypatch, capsys):
    admin = FakeAdmin()
    argv = "access-point create app --tenant acme --role crypto-user --key k1 --cidr 10.0.0.0/8"
    assert run(parser, monkeypatch, argv, admin) == 0
    assert admin.calls == [
        ("create_access_point", ("acme", "app", ["crypto-user"], ["k1"], [], ["10.0.0.0/8"]), {"operator": False})
    ]
    assert "orders-app" in capsys.readouterr().out
    assert run(parser, monkeypatch, "instance list -o json", admin) == 0
    assert json.loads(capsys.readouterr().out)[0]["instance_id"] == "dev-dedicated"
    assert run(parser, monkeypatch, "access-point delete ap-1", admin) == 0
    assert capsys.readouterr().out.startswith("deleted access point ap-1")
    assert run(parser, monkeypatch, "access-point delete ap-1 -o json", admin) == 0
    assert json.loads(capsys.readouterr().out) == {"access_point_id": "ap-1", "deleted": True}


def test_issue_passes_days_and_out_dir(parser, monkeypatch):
    admin = FakeAdmin()
    monkeypatch.setattr(admin_commands, "format_text", lambda value: "")
    run(parser, monkeypatch, "credential issue ap-1 --out creds --days 7", admin)
    assert admin.calls == [("issue_credential", ("ap-1",), {"validity_days": 7, "out_dir": "creds"})]


@pytest.mark.parametrize(
    "error, line",
    [
        (kr.AccessPointNotFoundError("no access point ap-9", request_id="r-1"),
         "error: no access point ap-9 [request id r-1]\n"),
        (kr.PermissionDeniedError("role crypto-user may not\nadminister"), "error: role crypto-user may not administer\n"),
        (kr.ProfileError("no profile at x.toml"), "error: no profile at x.toml\n"),
        (PermissionError(13, "Permission denied", "/ro/ap-1.key"), "error: cannot write /ro/ap-1.key: Permission denied\n"),
    ],
)
def test_errors_print_one_line_and_exit_1(parser, monkeypatch, capsys, error, line):
    assert run(parser, monkeypatch, "access-point describe ap-9", FakeAdmin(error)) == 1
    captured = capsys.readouterr()
    assert captured.err == line and captured.out == ""


def test_missing_profile_is_one_error_line(parser, monkeypatch, capsys, tmp_path):
    args = parser.parse_args(["instance", "list", "--profile", str(tmp_path / "none.toml")])
    assert args.func(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no profile at") and err.count("\n") == 1


def test_endpoint_without_any_profile_is_plain_text(parser, monkeypatch, tmp_path):
    monkeypatch.delenv("KEYRELAY_PROFILE", raising=False)
    monkeypatch.chdir(tmp_path)
    client = admin_commands._connect(parser.parse_args("instance list --endpoint 127.0.0.1:9".split()))
    with client:
        assert client.endpoint == "127.0.0.1:9" and client.profile is None
