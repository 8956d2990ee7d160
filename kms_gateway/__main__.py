"""`keyrelay gateway --config gateway.toml` (also `python -m kms_gateway`): run the gateway until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from foundation.config import ConfigError, parse_overrides
from foundation.grpc_server import serve_until_terminated
from foundation.logsetup import setup_logging
from kms_gateway.config import load_gateway_config

log = logging.getLogger("kms_gateway")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `keyrelay gateway`."""
    parser.add_argument("--config", "-c", required=True, help="the gateway's TOML config file")
    parser.add_argument(
        "--set", action="append", metavar="KEY=VALUE", default=[],
        help="override any config key, e.g. --set rate_limit.requests_per_second=200 (repeatable)",
    )


async def _serve(config) -> int:
    from kms_gateway.server import GatewayServer

    return await serve_until_terminated(GatewayServer(config), "gateway", log, (OSError, ConfigError, ValueError))


def run(args: argparse.Namespace) -> int:
    """Load the config, set up logging and serve until SIGTERM; returns the exit status."""
    try:
        config = load_gateway_config(args.config, overrides=parse_overrides(args.set))
    except ConfigError as exc:
        print(f"keyrelay gateway: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level)
    return asyncio.run(_serve(config))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="keyrelay gateway", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
