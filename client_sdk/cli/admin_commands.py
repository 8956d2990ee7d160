"""`keyrelay instance|access-point|credential ...`: administer the gateway (AdminService).

    keyrelay instance register dev-dedicated --tenant acme --node 127.0.0.1:7211 --private-endpoint 127.0.0.1:7202
    keyrelay access-point create orders-app --tenant acme --role crypto-user --key 'alias/orders-*'
    keyrelay credential issue ACCESS_POINT_ID --out ./orders-app

Every command reads the default profile (`$KEYRELAY_PROFILE`, else `.keyrelay/profile.toml`) unless
given `--profile FILE`; `--endpoint` overrides its gateway address. `--output json` prints
machine-readable JSON (datetimes in ISO 8601, bytes in base64; see `client_sdk.cli._output`). A
failure prints one line `error: ...` to stderr and exits 1.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from client_sdk.admin_client import ROLES, AdminClient
from client_sdk.cli import _output as output
from client_sdk.credentials import ProfileError
from client_sdk.types import AccessPoint, Credential, Instance, IssuedCredential
from foundation.config import ConfigError
from foundation.errors import KeyrelayError

Action = Callable[[AdminClient, argparse.Namespace], Any]

# What an empty list means, per field (elsewhere "-").
_EMPTY = {
    "key_patterns": "(no key)",
    "allowed_zones": "(any)",
    "allowed_cidrs": "(any)",
    "management_zones": "(any)",
}
# Table columns per record type: (header, field name or function of the record).
_COLUMNS: dict[type, tuple[tuple[str, str | Callable[[Any], Any]], ...]] = {
    Instance: (
        ("INSTANCE", "instance_id"),
        ("TENANT", "tenant_id"),
        ("PRIVATE ENDPOINT", "private_endpoint"),
        ("NODES", "node_endpoints"),
        ("PUBLIC CRYPTO", "allow_public_crypto"),
        ("CREATED", "create_time"),
    ),
    AccessPoint: (
        ("ACCESS POINT", "access_point_id"),
        ("TENANT", "tenant_id"),
        ("NAME", "name"),
        ("ROLES", "roles"),
        ("KEYS", "key_patterns"),
        ("OPERATOR", "operator"),
        ("CREATED", "create_time"),
    ),
    Credential: (
        ("SERIAL", "serial"),
        ("STATUS", Credential.status),
        ("NOT BEFORE", "not_before"),
        ("NOT AFTER", "not_after"),
        ("FINGERPRINT (SHA-256)", "fingerprint_sha256"),
    ),
}


# -- output ------------------------------------------------------------------------------------

# Derived JSON fields: a credential's status.
_DERIVED = {Credential: lambda c: {"status": c.status()}}


def format_table(records: list[Any], kind: type) -> str:
    """Records of one type as an aligned table with a header line ('(none)' when empty)."""
    return output.format_table(records, _COLUMNS[kind], _EMPTY)


def format_record(record: Any) -> str:
    """One record as `field  value` lines (a credential also gets its status)."""
    items = output.record_items(record, _EMPTY)
    if isinstance(record, Credential):
        items.insert(2, ("status", record.status()))
    return output.format_fields(items)


def format_issued(issued: IssuedCredential) -> str:
    """Where an issued credential was written, and how to use it."""
    c = issued.credential
    lines = [
        f"issued credential {c.serial} to access point {c.access_point_id} "
        f"(valid until {output.text_value(c.not_after)})"
    ]
    labels = {"cert": "certificate", "key": "private key", "ca": "CA certificate", "profile": "profile"}
    for name, label in labels.items():
        if name in issued.files:
            note = "  (mode 0600; keep it secret)" if name == "key" else ""
            lines.append(f"  {label.ljust(14)} {issued.files[name]}{note}")
    if "profile" in issued.files:
        lines.append(f"use it with: KEYRELAY_PROFILE={issued.files['profile']} keyrelay ...")
    return "\n".join(lines)


def format_text(value: Any) -> str:
    """The text output of a command's result."""
    if isinstance(value, str):
        return value
    if isinstance(value, IssuedCredential):
        return format_issued(value)
    if isinstance(value, list):
        kinds = {type(v) for v in value}
        return format_table(value, kinds.pop()) if value else "(none)"
    return format_record(value)


def to_plain(value: Any) -> Any:
    """A result as JSON-ready data: datetimes in ISO 8601, bytes as base64, no hidden fields."""
    return output.to_plain(value, _DERIVED)


def format_json(value: Any) -> str:
    """The JSON output of a command's result."""
    return output.format_json(value, _DERIVED)


# -- running a command -------------------------------------------------------------------------


def _connect(args: argparse.Namespace) -> AdminClient:
    return output.connect(AdminClient, args)


def _fail(message: str, request_id: str | None = None) -> int:
    line = " ".join(message.split())
    if request_id:
        line += f" [request id {request_id}]"
    print(f"error: {line}", file=sys.stderr)
    return 1


def _run(action: Action) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            with _connect(args) as admin:
                result = action(admin, args)
        except KeyrelayError as exc:
            return _fail(exc.message, exc.request_id)
        except (ProfileError, ConfigError) as exc:
            return _fail(str(exc))
        except OSError as exc:
            where = f" {exc.filename}" if exc.filename else ""
            return _fail(f"cannot write{where}: {exc.strerror or exc}")
        print(format_json(result) if args.output == "json" else format_text(result))
        return 0

    return run


# -- the commands ------------------------------------------------------------------------------


def _days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        days = -1
    if not 0 <= days <= 365:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days from 1 to 365 (0: the default, 90)")
    return days


def _command(sub, common, name: str, help: str, example: str, action: Action) -> argparse.ArgumentParser:
    parser = output.add_command(sub, name, help, example, parents=[common])
    parser.set_defaults(func=_run(action))
    return parser


def register(commands) -> None:
    """Add the `instance`, `access-point` and `credential` command groups to the `keyrelay` parser."""
    common = output.common_options()
    _register_instance(commands, common)
    _register_access_point(commands, common)
    _register_credential(commands, common)


def _register_instance(commands, common) -> None:
    sub = output.add_group(
        commands, "instance", "register and inspect dedicated KMS instances", "keyrelay instance list"
    )
    p = _command(
        sub, common, "register", "register a tenant's dedicated KMS instance with the gateway",
        "keyrelay instance register dev-dedicated --tenant acme --node 127.0.0.1:7211 "
        "--private-endpoint 127.0.0.1:7202 --zone internal",
        lambda admin, a: admin.register_instance(
            a.instance_id, a.tenant, a.nodes, a.private_endpoint, a.zones, a.allow_public_crypto
        ),
    )
    p.add_argument("instance_id", metavar="INSTANCE_ID", help="id for the instance, 1-63 of [a-z0-9-]")
    p.add_argument("--tenant", required=True, help="tenant that owns the instance")
    p.add_argument(
        "--node", dest="nodes", action="append", required=True, metavar="HOST:PORT",
        help="internal (gateway-facing) address of a node replica; repeat for each",
    )
    p.add_argument("--private-endpoint", required=True, metavar="HOST:PORT", help="the instance's private endpoint")
    p.add_argument(
        "--zone", dest="zones", action="append", default=[], metavar="ZONE",
        help="gateway listener zone management requests may come from; repeatable (none: any zone)",
    )
    p.add_argument(
        "--allow-public-crypto", action="store_true",
        help="let the public gateway serve crypto on the instance's keys (default: private endpoint only)",
    )

    _command(
        sub, common, "list", "list the instances this credential administers", "keyrelay instance list --output json",
        lambda admin, a: list(admin.iter_instances()),
    )
    p = _command(
        sub, common, "describe", "show one registered instance", "keyrelay instance describe dev-dedicated",
        lambda admin, a: admin.describe_instance(a.instance_id),
    )
    p.add_argument("instance_id", metavar="INSTANCE_ID")


def _register_access_point(commands, common) -> None:
    sub = output.add_group(
        commands, "access-point", "create, inspect and delete access points",
        "keyrelay access-point list --tenant acme",
    )
    p = _command(
        sub, common, "create",
        "create an access point: its roles, the keys it may use and where it may come from (all within your own)",
        "keyrelay access-point create orders-app --tenant acme --role crypto-user "
        "--key 'alias/orders-*' --cidr 10.0.0.0/8",
        lambda admin, a: admin.create_access_point(
            a.tenant, a.name, a.roles, a.keys, a.zones, a.cidrs, operator=a.operator
        ),
    )
    p.add_argument("name", metavar="NAME", help="a name for people and audit logs")
    p.add_argument("--tenant", required=True, help="tenant the access point acts for")
    p.add_argument(
        "--role", dest="roles", action="append", required=True, choices=tuple(ROLES),
        help="what its credentials may do; repeatable ('admin': all four roles)",
    )
    p.add_argument(
        "--operator", action="store_true",
        help="make it an operator: it administers every tenant (only an operator may)",
    )
    p.add_argument(
        "--key", dest="keys", action="append", default=[], metavar="PATTERN",
        help="key id or alias it may use, '*' a wildcard (e.g. 'alias/app-*'); repeatable (none: no key)",
    )
    p.add_argument(
        "--zone", dest="zones", action="append", default=[], metavar="ZONE",
        help="gateway listener zone it may come from; repeatable (none: any)",
    )
    p.add_argument(
        "--cidr", dest="cidrs", action="append", default=[], metavar="CIDR",
        help="client address range it may come from, e.g. 10.0.0.0/8; repeatable (none: any)",
    )

    p = _command(
        sub, common, "list", "list a tenant's access points", "keyrelay access-point list --tenant acme",
        lambda admin, a: list(admin.iter_access_points(a.tenant)),
    )
    p.add_argument("--tenant", required=True, help="tenant whose access points to list")
    p = _command(
        sub, common, "describe", "show one access point", "keyrelay access-point describe ACCESS_POINT_ID",
        lambda admin, a: admin.describe_access_point(a.access_point_id),
    )
    p.add_argument("access_point_id", metavar="ACCESS_POINT_ID")
    p = _command(
        sub, common, "delete", "delete an access point and revoke all its credentials at once",
        "keyrelay access-point delete ACCESS_POINT_ID",
        _delete_access_point,
    )
    p.add_argument("access_point_id", metavar="ACCESS_POINT_ID")


def _delete_access_point(admin: AdminClient, args: argparse.Namespace) -> Any:
    admin.delete_access_point(args.access_point_id)
    if args.output == "json":
        return {"access_point_id": args.access_point_id, "deleted": True}
    return f"deleted access point {args.access_point_id}; its credentials are revoked"


def _register_credential(commands, common) -> None:
    sub = output.add_group(
        commands, "credential", "issue, list and revoke access-point credentials (client certificates)",
        "keyrelay credential issue ACCESS_POINT_ID --out ./app",
    )
    p = _command(
        sub, common, "issue",
        "issue a client certificate to an access point; the key is made here and written to DIR "
        "with the certificate, the CA and a profile.toml",
        "keyrelay credential issue ACCESS_POINT_ID --out ./orders-app --days 30\n"
        "  KEYRELAY_PROFILE=./orders-app/profile.toml keyrelay ...",
        lambda admin, a: admin.issue_credential(a.access_point_id, validity_days=a.days, out_dir=a.out),
    )
    p.add_argument("access_point_id", metavar="ACCESS_POINT_ID")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write the credential and profile.toml into")
    p.add_argument("--days", type=_days, default=0, metavar="N", help="validity in days, 1-365 (default 90)")

    p = _command(
        sub, common, "list", "list an access point's credentials, revoked and expired ones included",
        "keyrelay credential list ACCESS_POINT_ID",
        lambda admin, a: admin.list_credentials(a.access_point_id),
    )
    p.add_argument("access_point_id", metavar="ACCESS_POINT_ID")
    p = _command(
        sub, common, "revoke", "revoke one credential by serial; every server refuses it from then on",
        "keyrelay credential revoke 5f1c0a9e3b",
        lambda admin, a: admin.revoke_credential(a.serial),
    )
    p.add_argument("serial", metavar="SERIAL", help="serial number (hex) from `credential list`")
