"""`keyrelay key ...` and `keyrelay alias ...`: the life of master keys, through the KMS.

    keyrelay key create --description orders --alias alias/orders --tag team=shop
    keyrelay key list --all --output json
    keyrelay key rotate alias/orders
    keyrelay key schedule-deletion alias/orders --days 7
    keyrelay alias create alias/payments 1b4e28ba-2fa1-4d3e-9a6f-1e0c2a7b5d10

KEY is a key id or an alias `alias/NAME`. Each command prints the key as it stands afterwards
(`--output json`: the KeyMetadata fields, datetimes in ISO 8601 UTC). Connection options, output
and errors follow `client_sdk.cli._output`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from client_sdk.cli import _output as output
from client_sdk.kms_client import KmsClient
from client_sdk.types import KeyMetadata, KeyPage

# What an empty value means in a key's text output (elsewhere "-").
_EMPTY = {"instance_id": "(shared KMS)", "tags": "(none)", "aliases": "(none)", "deletion_time": "(not scheduled)"}
_COLUMNS = (
    ("KEY ID", "key_id"),
    ("STATE", "state"),
    ("VERSION", "primary_version"),
    ("ALIASES", "aliases"),
    ("INSTANCE", lambda key: key.instance_id or "(shared)"),
    ("DESCRIPTION", "description"),
    ("CREATED", "create_time"),
)
_KEY_HELP = "key id or alias/NAME"


@dataclass(frozen=True)
class DeletedAlias:
    """What `alias delete` reports: the alias and the key it pointed to."""

    alias: str
    key_id: str


def format_text(value: Any) -> str:
    """The text output of a key or alias command's result."""
    if isinstance(value, KeyPage):
        return output.format_table(value.keys, _COLUMNS)
    if isinstance(value, DeletedAlias):
        return f"deleted {value.alias} (it pointed to key {value.key_id})"
    if isinstance(value, KeyMetadata):
        return output.format_fields(output.record_items(value, _EMPTY))
    return str(value)


def _list_keys(kms: KmsClient, args: argparse.Namespace) -> KeyPage:
    if args.all:
        return KeyPage(list(kms.iter_keys(page_size=args.page_size)), "")
    page = kms.list_keys(page_size=args.page_size, page_token=args.page_token)
    if page.next_page_token and args.output == "text":
        output.note(f"(more keys follow: add --page-token {page.next_page_token}, or use --all)")
    return page


def _delete_alias(kms: KmsClient, args: argparse.Namespace) -> DeletedAlias:
    return DeletedAlias(args.alias, kms.delete_alias(args.alias))


def register(commands) -> None:
    """Add the `key` and `alias` command groups to the `keyrelay` parser."""
    common = output.common_options()

    def command(sub, name: str, help: str, example: str, action) -> argparse.ArgumentParser:
        parser = output.add_command(sub, name, help, example, parents=[common])
        parser.set_defaults(func=output.client_command(KmsClient, action, format_text))
        return parser

    def key_command(sub, name: str, help: str, example: str, action) -> argparse.ArgumentParser:
        parser = command(sub, name, help, example, action)
        parser.add_argument("key", metavar="KEY", help=_KEY_HELP)
        return parser

    sub = output.add_group(commands, "key", "create, inspect and manage master keys", "keyrelay key list")
    p = command(
        sub, "create", "create an AES-256 master key (on a dedicated instance with --instance)",
        "keyrelay key create --description 'order records' --alias alias/orders --tag team=shop",
        lambda kms, a: kms.create_key(description=a.description, tags=a.tags, alias=a.alias, instance_id=a.instance),
    )
    p.add_argument("--description", default="", help="what the key is for")
    p.add_argument("--alias", default="", metavar="alias/NAME", help="an alias to give the key at once")
    p.add_argument("--tag", dest="tags", action=output.KeyValueAction, default={}, metavar="KEY=VALUE",
                   help="a tag; repeatable")
    p.add_argument("--instance", default="", metavar="INSTANCE_ID",
                   help="create the key on this dedicated KMS instance (default: the shared KMS)")

    p = command(
        sub, "list", "list your keys, a page at a time or --all of them",
        ["keyrelay key list", "keyrelay key list --all --output json"],
        _list_keys,
    )
    pages = p.add_mutually_exclusive_group()
    pages.add_argument("--all", action="store_true", help="fetch every page")
    pages.add_argument("--page-token", default="", metavar="TOKEN", help="the page after the one that gave TOKEN")
    p.add_argument("--page-size", type=output.int_in_range(1, 1000), default=0, metavar="N",
                   help="keys per page, 1-1000 (default 100)")

    key_command(sub, "describe", "show a key: state, versions, aliases, tags", "keyrelay key describe alias/orders",
                lambda kms, a: kms.describe_key(a.key))
    key_command(sub, "enable", "enable a disabled key", "keyrelay key enable alias/orders",
                lambda kms, a: kms.enable_key(a.key))
    key_command(sub, "disable", "disable a key: it refuses all cryptography until enabled",
                "keyrelay key disable alias/orders", lambda kms, a: kms.disable_key(a.key))
    key_command(sub, "rotate", "add a new primary version; older versions keep decrypting",
                "keyrelay key rotate alias/orders", lambda kms, a: kms.rotate_key(a.key))
    p = key_command(
        sub, "schedule-deletion", "schedule a key's deletion after a waiting period; it is unusable meanwhile",
        "keyrelay key schedule-deletion alias/orders --days 7",
        lambda kms, a: kms.schedule_key_deletion(a.key, pending_window_days=a.days),
    )
    p.add_argument("--days", type=output.int_in_range(7, 30), default=0, metavar="N",
                   help="waiting period, 7-30 days (default 30)")
    key_command(sub, "cancel-deletion", "cancel a scheduled deletion; the key stays disabled until enabled",
                "keyrelay key cancel-deletion alias/orders", lambda kms, a: kms.cancel_key_deletion(a.key))

    sub = output.add_group(commands, "alias", "give keys names (alias/NAME) and take them away",
                           "keyrelay alias create alias/orders KEY_ID")
    p = command(sub, "create", "point a new alias at a key", "keyrelay alias create alias/orders KEY_ID",
                lambda kms, a: kms.create_alias(a.alias, a.key))
    p.add_argument("alias", metavar="alias/NAME", help="the new alias")
    p.add_argument("key", metavar="KEY", help=_KEY_HELP)
    p = command(sub, "delete", "delete an alias (the key stays)", "keyrelay alias delete alias/orders", _delete_alias)
    p.add_argument("alias", metavar="alias/NAME", help="the alias to delete")
