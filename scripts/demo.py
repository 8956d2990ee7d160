"""`make demo`: `keyrelay dev up`, a tour of keyrelay through its command line, `keyrelay dev down`.

Each step prints the command it runs (as a user would type it) and checks its result: a key on
the shared KMS and one on the dedicated instance, encryption and decryption under both, a file
envelope-encrypted and decrypted, alice and bob registered, alice sending bob a message and bob
reading it. The cluster runs in a temporary state directory and is stopped at the end, whatever
happened. Exit status 0 only if every check held.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from devstack.processes import port_in_use
from devstack.provision import INSTANCE, SEALING_ALIAS
from devstack.stack import DEFAULT_PORT_BASE, PROFILES
from kms_gateway.devcluster import PORT_OFFSETS
from kms_node import devsetup

PASSPHRASE = "demo passphrase, not a secret"


class Tour:
    """Runs `keyrelay` commands, shows them, and records failed checks (the admin profile is the
    default one, `.keyrelay/profile.toml`)."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.failures: list[str] = []
        self.env = dict(os.environ, KEYRELAY_PASSPHRASE=PASSPHRASE)
        for name in ("KEYRELAY_PROFILE", "KEYRELAY_DEVICE"):
            self.env.pop(name, None)

    def step(self, title: str) -> None:
        print(f"\n== {title}", flush=True)

    def check(self, ok: bool, what: str) -> bool:
        print(f"   [{'ok' if ok else 'FAILED'}] {what}", flush=True)
        if not ok:
            self.failures.append(what)
        return ok

    def keyrelay(self, *args: str, stdin: bytes | None = None, show: str | None = None) -> subprocess.CompletedProcess:
        """Run `keyrelay ARGS`, printing the command line (`show` replaces it when it has a pipe)."""
        print(f"   $ {show or shlex.join(['keyrelay', *args])}", flush=True)
        done = subprocess.run(
            [*devsetup.keyrelay_command(), *args], input=stdin, capture_output=True, env=self.env, timeout=300,
        )
        if done.returncode != 0:
            print(f"     exit {done.returncode}: {done.stderr.decode(errors='replace').strip()}", flush=True)
        return done

    def json(self, *args: str, stdin: bytes | None = None, show: str | None = None) -> dict | list | None:
        done = self.keyrelay(*args, "-o", "json", stdin=stdin, show=show)
        if done.returncode != 0:
            return None
        return json.loads(done.stdout)


def port_base() -> int:
    """7100 (the default) when free, else another run of free ports."""
    span = max(PORT_OFFSETS.values()) + 1
    for base in (DEFAULT_PORT_BASE, *range(17100, 40000, 100)):
        if not any(port_in_use("127.0.0.1", base + offset) for offset in range(span)):
            return base
    raise SystemExit("demo: found no free run of ports on 127.0.0.1")


def keys(tour: Tour) -> tuple[str, str]:
    tour.step(f"Two master keys: one on the shared KMS, one on the dedicated instance {INSTANCE}")
    shared = tour.json(
        "key", "create", "--description", "demo orders", "--alias", "alias/demo-orders"
    )
    tour.check(bool(shared) and shared["state"] == "ENABLED" and not shared["instance_id"],
               "alias/demo-orders is enabled on the shared KMS")
    dedicated = tour.json(
        "key", "create", "--description", "demo payroll", "--alias", "alias/demo-payroll",
        "--instance", INSTANCE,
    )
    tour.check(bool(dedicated) and dedicated["instance_id"] == INSTANCE,
               f"alias/demo-payroll is enabled on {INSTANCE} (its material lives only in that instance's HSM pool)")
    return "alias/demo-orders", "alias/demo-payroll"


def crypto(tour: Tour, app: str, aliases: tuple[str, str]) -> None:
    for alias, where in zip(aliases, ("the gateway", f"the private endpoint of {INSTANCE}")):
        tour.step(f"Encrypt and decrypt under {alias} (the SDK sends it to {where})")
        secret = b"card ending 4242"
        encrypted = tour.keyrelay(
            "encrypt", "--key", alias, "--context", "order=42", "--profile", app, stdin=secret,
            show=f"echo -n 'card ending 4242' | keyrelay encrypt --key {alias} --context order=42 --profile {app} > blob",
        )
        if not tour.check(encrypted.returncode == 0, "encrypted"):
            continue
        blob = encrypted.stdout
        decrypted = tour.keyrelay(
            "decrypt", "--context", "order=42", "--profile", app, stdin=blob,
            show=f"keyrelay decrypt --context order=42 --profile {app} < blob",
        )
        tour.check(decrypted.returncode == 0 and decrypted.stdout == secret, "decrypted to the same bytes")
        wrong = tour.keyrelay(
            "decrypt", "--context", "order=43", "--profile", app, stdin=blob,
            show=f"keyrelay decrypt --context order=43 --profile {app} < blob",
        )
        tour.check(wrong.returncode == 1 and b"CIPHERTEXT_AUTHENTICATION_FAILED" in wrong.stderr,
                   "another encryption context is refused")


def envelope(tour: Tour, app: str, alias: str) -> None:
    tour.step(f"Envelope encryption of a 4 MiB file under a data key of {alias}")
    folder = tour.state / "demo-files"
    folder.mkdir(exist_ok=True)
    plain, sealed, opened = folder / "report.bin", folder / "report.bin.kre", folder / "report.out"
    plain.write_bytes(os.urandom(4 * 1024 * 1024))
    done = tour.keyrelay("envelope", "encrypt", "--key", alias, "--context", "file=report", "--no-progress",
                         "--profile", app, str(plain), str(sealed))
    tour.check(done.returncode == 0 and sealed.stat().st_size > plain.stat().st_size, "encrypted, streamed in chunks")
    done = tour.keyrelay("envelope", "decrypt", "--context", "file=report", "--no-progress",
                         "--profile", app, str(sealed), str(opened))
    same = opened.exists() and hashlib.sha256(opened.read_bytes()).digest() == hashlib.sha256(plain.read_bytes()).digest()
    tour.check(done.returncode == 0 and same, "decrypted file equals the original (SHA-256)")


def messaging(tour: Tour, messaging_profile: str) -> None:
    tour.step("alice and bob: key pairs made on their devices, public keys sealed by the KMS, published")
    devices = {user: str(tour.state / f"{user}.keys") for user in ("alice", "bob")}
    for user in ("alice", "bob"):
        registered = tour.json("msg", "register", user, "--key", SEALING_ALIAS,
                               "--profile", messaging_profile, "--device", devices[user])
        tour.check(bool(registered) and registered["user_id"] == user, f"{user} registered")

    tour.step("alice sends bob an end-to-end encrypted, signed message through the relay")
    text = "lunch at 1?"
    sent = tour.json("msg", "send", "bob", "--profile", messaging_profile, "--device", devices["alice"],
                     stdin=text.encode(),
                     show=f"echo '{text}' | keyrelay msg send bob --profile {messaging_profile} --device {devices['alice']}")
    tour.check(bool(sent), "the relay stored it (it holds only ciphertext)")

    tour.step("bob reads it: the signature is checked, the message decrypted and acknowledged")
    received = None
    for _ in range(3):  # delivery is immediate; the loop only absorbs a slow machine
        done = tour.keyrelay("msg", "recv", "--profile", messaging_profile, "--device", devices["bob"], "-o", "json")
        lines = [json.loads(line) for line in done.stdout.decode().splitlines() if line.strip()]
        received = next((m for m in lines if m.get("sender") == "alice"), None)
        if received or done.returncode != 0:
            break
        time.sleep(1)
    ok = bool(received) and received["text"].rstrip("\n") == text
    if received:
        print(f"     alice: {received['text'].rstrip()}")
    tour.check(ok, "bob read alice's message, verified as from alice")


def main() -> int:
    # The tour runs in a fresh directory with the state in its .keyrelay/, as in the README: the
    # admin profile is then the default one, and paths stay short.
    workdir = Path(tempfile.mkdtemp(prefix="keyrelay-demo-"))
    os.chdir(workdir)
    state = Path(".keyrelay")
    tour = Tour(state)
    profiles = {spec.name: str(state / spec.file) for spec in PROFILES}
    print(f"demo: working in {workdir}")
    tour.step("keyrelay dev up: SoftHSM pools, CAs, configs; two shared nodes, a dedicated node, gateway, relay")
    base = port_base()
    up = tour.keyrelay("dev", "up", *(["--port-base", str(base)] if base != DEFAULT_PORT_BASE else []))
    print("\n".join(f"     {line}" for line in up.stdout.decode().splitlines()))
    try:
        if not tour.check(up.returncode == 0, "every daemon is serving"):
            print(up.stderr.decode(errors="replace"), file=sys.stderr)
            return 1
        aliases = keys(tour)
        crypto(tour, profiles["app"], aliases)
        envelope(tour, profiles["app"], aliases[0])
        messaging(tour, profiles["messaging"])
    finally:
        tour.step("keyrelay dev down: SIGTERM to each daemon, wait, report")
        down = tour.keyrelay("dev", "down")
        print("\n".join(f"     {line}" for line in down.stdout.decode().splitlines()))
        tour.check(down.returncode == 0, "every daemon stopped cleanly")
    if tour.failures:
        print(f"\ndemo: {len(tour.failures)} check(s) FAILED: {'; '.join(tour.failures)}")
        print(f"the daemons' logs are in {workdir / state / 'logs'}")
        return 1
    shutil.rmtree(workdir)
    print("\ndemo: every check held. Run `keyrelay dev up` in your own directory to keep a cluster running.")
    return 0

if __name__ == "__main__":
    sys.exit(main())
