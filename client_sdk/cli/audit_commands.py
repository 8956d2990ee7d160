"""`keyrelay audit verify`: check the hash chain of an audit log."""

from __future__ import annotations

import argparse
import sys


def register(commands) -> None:
    """Add the `audit` command group to the `keyrelay` parser."""
    audit = commands.add_parser("audit", help="inspect the gateway's audit logs")
    sub = audit.add_subparsers(dest="audit_command", metavar="SUBCOMMAND", required=True)
    verify = sub.add_parser(
        "verify",
        help="check that no record of an audit log was edited, dropped, inserted or moved",
        description=(
            "Check the hash chain of an audit log and name the first bad line: a record that was\n"
            "edited, dropped, inserted or moved, or a last line a crash left incomplete. Records cut\n"
            "off the end leave an intact, shorter chain: compare the record count with what you\n"
            "expect. Exits 0 when the chain is intact, 1 otherwise.\n\n"
            "Example: keyrelay audit verify /var/log/keyrelay/audit.jsonl"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verify.add_argument("file", metavar="FILE", help="the audit log (JSON lines)")
    verify.set_defaults(func=_verify)


def _verify(args: argparse.Namespace) -> int:
    from foundation.audit import verify

    try:
        report = verify(args.file)
    except FileNotFoundError:
        print(f"keyrelay audit verify: {args.file}: no such file", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"keyrelay audit verify: {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if not report.ok:
        print(f"{args.file}: {report.problem}", file=sys.stderr)
        return 1
    print(f"{args.file}: {report.records} records, chain intact, head {report.head}")
    return 0
