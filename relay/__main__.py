"""`keyrelay relay --config relay.toml` (also `python -m relay`): run the relay until SIGTERM.

`keyrelay relay --config relay.toml --issue-token USER` is the operator's recovery of an account
whose device token expired, was revoked or was stolen: it revokes every token of the account and
prints a new one (on stdout, alone, for the user's device), then exits. It works beside a running
relay; relays sharing the store stop accepting the old tokens within `tokens.cache_seconds`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time

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
    parser.add_argument(
        "--issue-token", metavar="USER",
        help="revoke every device token of account USER, print a new one and exit (instead of serving)",
    )


async def _serve(config) -> int:
    from foundation.errors import UnavailableError
    from relay.server import RelayServer

    # UnavailableError: PostgreSQL unreachable; ConfigError: it refused the store's tables (both
    # messages name the DSN without its password).
    startup_errors = (OSError, ConfigError, ValueError, RuntimeError, UnavailableError)
    return await serve_until_terminated(RelayServer(config), "relay", log, startup_errors)


async def _issue_token(config, user_id: str) -> int:
    from foundation.errors import KeyrelayError
    from relay.service import RelayService
    from relay.store.base import MailboxLimits
    from relay.store.sql import SqlRelayStore

    store = SqlRelayStore(config.store.location)
    service = RelayService(
        store,
        limits=MailboxLimits(config.mailbox.max_messages, config.mailbox.max_bytes),
        ttl_seconds=config.mailbox.message_ttl_seconds,
        dedupe_seconds=config.mailbox.dedupe_seconds,
        tokens=config.tokens,
    )
    try:
        issued = await service.issue_token(user_id)
    except KeyrelayError as exc:
        print(f"keyrelay relay: {exc}", file=sys.stderr)
        return 1
    finally:
        await service.close()
        store.close()
    print(issued.device_token)
    expiry = "never" if issued.expire_time is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(issued.expire_time))
    print(
        f"keyrelay relay: issued a device token for {issued.user_id} (expires: {expiry}); every earlier token of the "
        "account is revoked. Give it to the user's device only over a secure channel.",
        file=sys.stderr,
    )
    return 0


def run(args: argparse.Namespace) -> int:
    """Load the config, set up logging and serve until SIGTERM; returns the exit status."""
    try:
        config = load_relay_config(args.config, overrides=parse_overrides(args.set))
    except ConfigError as exc:
        print(f"keyrelay relay: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level)
    if args.issue_token is not None:
        return asyncio.run(_issue_token(config, args.issue_token))
    return asyncio.run(_serve(config))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="keyrelay relay", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
