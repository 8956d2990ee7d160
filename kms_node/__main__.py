"""`keyrelay node --config node.toml` (also `python -m kms_node`): run a KMS node until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from foundation.config import ConfigError, parse_overrides
from foundation.errors import KeyrelayError
from foundation.grpc_server import serve_until_terminated
from foundation.logsetup import setup_logging
from kms_node.config import load_node_config

log = logging.getLogger("kms_node")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `keyrelay node`."""
    parser.add_argument("--config", "-c", required=True, help="the node's TOML config file")
    parser.add_argument("--listen", help="host:port to serve on (overrides `listen`)")
    parser.add_argument(
        "--set", action="append", metavar="KEY=VALUE", default=[],
        help="override any config key, e.g. --set hsm.sessions_per_slot=8 (repeatable)",
    )


async def _serve(config, pin) -> int:
    from kms_node.server import NodeServer

    # KeyrelayError covers an unreachable PostgreSQL (UnavailableError); ConfigError a store it refuses;
    # RuntimeError a store whose schema is newer than this keyrelay.
    startup_errors = (KeyrelayError, OSError, ConfigError, RuntimeError)
    return await serve_until_terminated(NodeServer(config, pin=pin), "node", log, startup_errors)


def run(args: argparse.Namespace) -> int:
    """Load the config, set up logging and serve until SIGTERM; returns the exit status."""
    try:
        overrides = parse_overrides(args.set)
        if args.listen:
            overrides["listen"] = args.listen
        config = load_node_config(args.config, overrides=overrides)
        pin = config.user_pin()
    except ConfigError as exc:
        print(f"keyrelay node: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level)
    return asyncio.run(_serve(config, pin))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="keyrelay node", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
