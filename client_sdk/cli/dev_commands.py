"""`keyrelay dev up|status|down`: a whole keyrelay on this machine, for development.

    keyrelay dev up                  # SoftHSM pools, PKI, configs; nodes, gateway, relay; profiles
    keyrelay dev status
    keyrelay dev down

Everything lives in the state directory (`--state-dir`, default `.keyrelay`); see
`devstack.stack` for what `up` makes and starts. The daemons are imported only when a `dev`
command runs, so the other commands stay light.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from client_sdk.cli import _output as output

_STATE_DIR_HELP = "the dev cluster's directory (default .keyrelay; its profile.toml is the CLI's default profile)"


def register(commands) -> None:
    """Add the `dev` command group to the `keyrelay` parser."""
    dev = output.add_group(
        commands, "dev", "run a development cluster on this machine: nodes, gateway and relay on SoftHSM",
        ["keyrelay dev up", "keyrelay key create --alias alias/orders", "keyrelay dev down"],
    )
    up = output.add_command(
        dev, "up",
        "set up (first time) and start two shared nodes, a dedicated node, the gateway and the relay in the "
        "background, wait until each is healthy, write the profiles and print the endpoints; when already up, "
        "report status",
        ["keyrelay dev up", "keyrelay dev up --state-dir /tmp/kr --port-base 7200"],
    )
    up.add_argument("--port-base", type=output.int_in_range(1024, 65000), metavar="N",
                    help="listen on ports N to N+14, N+20.. for further replicas (default 7100; fixed when the "
                    "directory is first set up)")
    up.add_argument("--postgres", metavar="DSN",
                    help="keep every store in this PostgreSQL database (a schema per role, made here), e.g. "
                    "postgresql://postgres@127.0.0.1:5432/postgres; default: SQLite files in the state directory")
    up.add_argument("--replicas", type=output.int_in_range(1, 4), metavar="N",
                    help="run N gateways, N dedicated nodes and N relays (beside the two shared nodes); more than "
                    "one relay needs --postgres to share mailboxes (default 1)")
    status = output.add_command(
        dev, "status", "show each daemon of the dev cluster: pid, address, health (exit 1 unless all serve)",
        "keyrelay dev status -o json",
    )
    down = output.add_command(
        dev, "down", "stop every daemon of the dev cluster with SIGTERM, wait for each and report; the state stays",
        ["keyrelay dev down", "keyrelay dev down && rm -rf .keyrelay   # start afresh next time"],
    )
    for parser, func in ((up, _up), (status, _status), (down, _down)):
        parser.add_argument("--state-dir", metavar="DIR", default=".keyrelay", help=_STATE_DIR_HELP)
        parser.add_argument("--output", "-o", choices=output.OUTPUT_FORMATS, default="text",
                            help="output format (default text)")
        parser.set_defaults(func=func)


def _stack(args: argparse.Namespace):
    from devstack.stack import DevStack

    return DevStack(
        args.state_dir, getattr(args, "port_base", None),
        postgres=getattr(args, "postgres", None), replicas=getattr(args, "replicas", None),
    )


def _dev_errors(command):
    """Report a DevStackError as `keyrelay: MESSAGE` plus its detail lines; the rest as `guarded`."""

    @output.guarded
    def run(args: argparse.Namespace) -> int:
        from devstack.stack import DevStackError

        try:
            return command(args)
        except DevStackError as exc:
            status = output.fail(str(exc))
            if exc.detail:
                print(exc.detail, file=sys.stderr)
            return status

    return run


def _progress(line: str) -> None:
    output.note(f"  {line}")


@_dev_errors
def _up(args: argparse.Namespace) -> int:
    stack = _stack(args)
    status, started = stack.up(_progress)
    if args.output == "json":
        print(output.format_json(dict(output.to_plain(status), started=started)))
    else:
        if not started:
            print(f"the dev cluster in {status.state_dir} is already up")
        print(_format_status(status))
        if started:
            print(_next_steps(status))
    return 0 if status.all_serving else output.EXIT_FAILURE


@_dev_errors
def _status(args: argparse.Namespace) -> int:
    status = _stack(args).status()
    if args.output == "json":
        print(output.format_json(status))
    else:
        print(_format_status(status))
    return 0 if status.all_serving else output.EXIT_FAILURE


@_dev_errors
def _down(args: argparse.Namespace) -> int:
    stack = _stack(args)
    outcomes = stack.down(_progress)
    if args.output == "json":
        print(output.format_json({"state_dir": args.state_dir, "stopped": outcomes}))
    elif not outcomes:
        print(f"no dev cluster is running in {args.state_dir}")
    else:
        width = max(len(name) for name in outcomes)
        print("\n".join(f"{name:<{width}}  {outcome}" for name, outcome in outcomes.items()))
        print(f"state kept in {args.state_dir}: `keyrelay dev up` starts the same cluster again")
    killed = any(outcome.startswith("killed") for outcome in outcomes.values())
    return output.EXIT_FAILURE if killed else 0


def _format_status(status) -> str:
    lines = [f"dev cluster in {status.state_dir} (tenant {status.tenant})"]
    width = max(len(d.name) for d in status.daemons)
    for daemon in status.daemons:
        pid = f"pid {daemon.pid}" if daemon.pid else "-"
        lines.append(f"  {daemon.name:<{width}}  {daemon.address:<16} {pid:<10} {daemon.state}")
    lines.append(f"gateway:          {status.gateway}")
    for instance, endpoint in status.private_endpoints.items():
        lines.append(f"private endpoint: {endpoint} (instance {instance})")
    lines.append(f"relay:            {status.relay}")
    if status.postgres:
        database = next(iter(status.postgres.values())).split("?", 1)[0]
        schemas = ", ".join(re.sub(r".*search_path%3D", "", dsn) for dsn in status.postgres.values())
        lines.append(f"stores:           PostgreSQL {database}, schemas {schemas}")
    if status.profiles:
        from devstack.stack import PROFILES

        lines.append("profiles:")
        width = max(len(path) for path in status.profiles.values())
        for spec in PROFILES:
            lines.append(f"  {status.profiles[spec.name]:<{width}}  {spec.role:<15} {spec.purpose}")
        lines.append(f"sealing key for messaging: {status.sealing_key}")
    lines.append(f"logs: {status.state_dir}/logs/")
    return "\n".join(lines)


def _next_steps(status) -> str:
    from client_sdk.credentials import default_profile_path

    def flag(name: str) -> str:
        path = status.profiles.get(name, "PROFILE")
        return "" if Path(path).resolve() == default_profile_path().resolve() else f" --profile {path}"

    down = "" if Path(status.state_dir).resolve() == Path(".keyrelay").resolve() else f" --state-dir {status.state_dir}"
    return (
        "\ntry:\n"
        f"  keyrelay key create --alias alias/orders{flag('admin')}\n"
        f"  echo -n 'card 4242' | keyrelay encrypt --key alias/orders{flag('app')} > blob\n"
        f"  keyrelay decrypt{flag('app')} < blob\n"
        f"  keyrelay dev down{down}"
    )
