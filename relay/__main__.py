"""`keyrelay relay --config relay.toml` (also `python -m relay`): run the relay until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from foundation.config import ConfigError, parse_overrides
from foundation.grpc_server import serve_until_terminated
from foundation.logsetup import setup_logging
from relay.config import load_relay_config

log = logging.getLogger("relay")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `keyrelay relay`."""
    parser.add_argument("--config", "-c", required=True, help="the relay's TOML config file")
    parser.add_argument(
        "--set", action="append", metavar="KEY=VALUE", default=[],
        help="override any config key, e.g. --set mailbox.max_messages=50000 (repeatable)",
    )


async def _serve(config) -> int:
    from foundation.errors import UnavailableError
    from relay.server import RelayServer

    # UnavailableError: PostgreSQL unreachable; ConfigError: it refused the store's tables (both
    # messages name the DSN without its password).
    startup_errors = (OSError, ConfigError, ValueError, RuntimeError, UnavailableError)
    return await serve_until_terminated(RelayServer(config), "relay", log, startup_errors)


def run(args: argparse.Namespace) -> int:
    """Load the config, set up logging and serve until SIGTERM; returns the exit status."""
    try:
        config = load_relay_config(args.config, overrides=parse_overrides(args.set))
    except ConfigError as exc:
        print(f"keyrelay relay: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level)
    return asyncio.run(_serve(config))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="keyrelay relay", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
