"""`keyrelay hsm init`: provision a node's HSM pool (tokens and domain key)."""

from __future__ import annotations

import argparse
import sys

from foundation.config import ConfigError, parse_overrides
from foundation.errors import KeyrelayError


def register(commands) -> None:
    """Add the `hsm` command group to the `keyrelay` parser."""
    hsm = commands.add_parser("hsm", help="provision and inspect a node's HSM pool")
    sub = hsm.add_subparsers(dest="hsm_command", metavar="SUBCOMMAND", required=True)
    init = sub.add_parser(
        "init",
        help="initialise the pool's tokens and provision its domain key (once per pool)",
        description=(
            "Initialise every token of the node's pool that does not exist yet, then import one fresh "
            "domain key into all of them. Refuses to replace an existing domain key. The user PIN and "
            "SO PIN come from the variables or files the config names.\n\n"
            "Example: KEYRELAY_HSM_PIN=1234 KEYRELAY_HSM_SO_PIN=5678 keyrelay hsm init --config node.toml"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    init.add_argument("--config", "-c", required=True, help="the node's TOML config file")
    init.add_argument("--set", action="append", metavar="KEY=VALUE", default=[], help="override a config key")
    init.set_defaults(func=_init)


def _init(args: argparse.Namespace) -> int:
    from kms_node.config import load_node_config
    from kms_node.hsm.provision import provision_pool

    try:
        config = load_node_config(args.config, overrides=parse_overrides(args.set))
        user_pin = config.user_pin()
        so_pin = config.so_pin()
    except ConfigError as exc:
        print(f"keyrelay hsm init: {exc}", file=sys.stderr)
        return 2
    try:
        report = provision_pool(
            config.hsm.module,
            list(config.hsm.tokens),
            so_pin=so_pin,
            user_pin=user_pin,
            domain_key_label=config.hsm.domain_key_label,
        )
    except KeyrelayError as exc:
        print(f"keyrelay hsm init: {exc}", file=sys.stderr)
        return 1
    for label in report.initialised_tokens:
        print(f"initialised token {label}")
    for label in report.existing_tokens:
        print(f"token {label} exists")
    print(f"domain key {report.domain_key_label!r} provisioned in {len(config.hsm.tokens)} token(s)")
    return 0
