"""The `keyrelay` command.

    keyrelay node --config node.toml         run a KMS node
    keyrelay gateway --config gateway.toml   run the KMS gateway
    keyrelay relay --config relay.toml       run the messaging relay (directory and mailboxes)
    keyrelay hsm init --config node.toml     initialise the pool's tokens and its domain key
    keyrelay instance|access-point|credential ...   administer dedicated instances and access
    keyrelay pki create-ca|issue             make CAs and certificates for a deployment
    keyrelay audit verify FILE               check an audit log's hash chain
    keyrelay key|alias ...                   manage master keys and aliases
    keyrelay encrypt|decrypt|datakey         cryptography under a master key, stdin to stdout
    keyrelay envelope encrypt|decrypt IN OUT files of any size, streamed under a data key
    keyrelay msg register|rotate|send|recv   end-to-end encrypted messages through the relay
    keyrelay dev up|status|down              a development cluster on this machine (SoftHSM)

Daemon commands import their package only when chosen, so the client commands stay light.
"""

from __future__ import annotations

import argparse
import sys

from client_sdk.cli import admin_commands, audit_commands, hsm_commands, pki_commands
from client_sdk.cli import crypto_commands, dev_commands, envelope_commands, key_commands, msg_commands


def _node(args: argparse.Namespace) -> int:
    from kms_node.__main__ import run

    return run(args)


def _gateway(args: argparse.Namespace) -> int:
    from kms_gateway.__main__ import run

    return run(args)


def _relay(args: argparse.Namespace) -> int:
    from relay.__main__ import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the whole `keyrelay` command."""
    parser = argparse.ArgumentParser(
        prog="keyrelay",
        description="keyrelay: a KMS on PKCS#11 HSMs and an end-to-end encrypted messaging relay.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    from kms_node.__main__ import add_arguments as add_node_arguments

    node = commands.add_parser(
        "node",
        help="run a KMS node (shared or dedicated) until SIGTERM",
        description="Run a KMS node. Example: KEYRELAY_HSM_PIN=... keyrelay node --config deploy/node-shared.toml",
    )
    add_node_arguments(node)
    node.set_defaults(func=_node)

    from kms_gateway.__main__ import add_arguments as add_gateway_arguments

    gateway = commands.add_parser(
        "gateway",
        help="run the KMS gateway until SIGTERM",
        description="Run the KMS gateway. Example: keyrelay gateway --config deploy/gateway.toml",
    )
    add_gateway_arguments(gateway)
    gateway.set_defaults(func=_gateway)

    from relay.__main__ import add_arguments as add_relay_arguments

    relay = commands.add_parser(
        "relay",
        help="run the messaging relay until SIGTERM",
        description="Run the relay: the directory of sealed public keys and the mailboxes; it never talks to "
        "the KMS. Example: keyrelay relay --config deploy/relay.toml",
    )
    add_relay_arguments(relay)
    relay.set_defaults(func=_relay)

    key_commands.register(commands)
    crypto_commands.register(commands)
    envelope_commands.register(commands)
    msg_commands.register(commands)
    hsm_commands.register(commands)
    admin_commands.register(commands)
    pki_commands.register(commands)
    audit_commands.register(commands)
    dev_commands.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `keyrelay` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
