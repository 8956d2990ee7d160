"""`make demo`: a KMS node on a fresh SoftHSM dev pool, and a short tour of the KMS through the SDK.

Every step prints what it does and checks its result; the demo exits 0 only if all checks held.
The node runs as a real process (`keyrelay hsm init`, `keyrelay node`) and is stopped with SIGTERM.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import client_sdk as kr
from kms_node import devsetup

_failures: list[str] = []


def step(title: str) -> None:
    print(f"\n== {title}")


def check(ok: bool, what: str) -> None:
    print(f"   [{'ok' if ok else 'FAILED'}] {what}")
    if not ok:
        _failures.append(what)


def tour(kms: kr.KmsClient) -> None:
    """The KMS calls a user meets first, each checked."""
    step("CreateKey: an AES-256 master key generated inside the HSM, with an alias")
    key = kms.create_key(description="demo orders key", tags={"env": "demo"}, alias="alias/demo-orders")
    print(f"   key {key.key_id} state={key.state} version={key.primary_version}")
    check(key.state == "ENABLED" and key.aliases == ("alias/demo-orders",), "key is enabled and aliased")

    step("Encrypt / Decrypt with an encryption context (authenticated, not secret)")
    context = {"order": "42"}
    blob = kms.encrypt("alias/demo-orders", b"card ending 4242", context=context)
    print(f"   ciphertext blob: {len(blob.ciphertext_blob)} bytes under version {blob.key_version}")
    check(kms.decrypt(blob.ciphertext_blob, context=context).plaintext == b"card ending 4242", "round trip")
    try:
        kms.decrypt(blob.ciphertext_blob, context={"order": "43"})
        check(False, "a wrong context is refused")
    except kr.CiphertextAuthenticationError as exc:
        print(f"   wrong context -> {exc.code.name}: {exc}")
        check(True, "a wrong context is refused")

    step("GenerateDataKey: envelope encryption's data key")
    data_key = kms.generate_data_key(key.key_id, number_of_bytes=32, context={"file": "report.pdf"})
    unwrapped = kms.decrypt(data_key.ciphertext_blob, context={"file": "report.pdf"}).plaintext
    check(len(data_key.plaintext) == 32 and unwrapped == data_key.plaintext, "the wrapped data key decrypts to it")

    step("RotateKey: a new version; ciphertexts of the old one still decrypt")
    rotated = kms.rotate_key(key.key_id)
    fresh = kms.encrypt(key.key_id, b"after rotation")
    print(f"   versions {rotated.versions}, new ciphertexts use version {fresh.key_version}")
    check(kms.decrypt(blob.ciphertext_blob, context=context).plaintext == b"card ending 4242", "version 1 decrypts")
    check(fresh.key_version == 2, "new ciphertexts use version 2")

    step("BatchDecrypt: many ciphertexts in one call, errors per item")
    results = kms.batch_decrypt([(blob.ciphertext_blob, context), (fresh.ciphertext_blob, {}), (b"garbage", {})])
    for i, item in enumerate(results):
        print(f"   item {i}: {'ok' if item.ok else type(item.error).__name__}")
    check([r.ok for r in results] == [True, True, False], "two succeed, the garbage fails alone")

    step("SealPublicKey / OpenPublicKey: the directory's sealed records (KMS stores neither)")
    sealed = kms.seal_public_key(key.key_id, "alice", b"alice's public key bundle", 1)
    check(kms.open_public_key(sealed).public_key_bundle == b"alice's public key bundle", "alice's record opens")
    try:
        from dataclasses import replace

        kms.open_public_key(replace(sealed, user_id="mallory"))
        check(False, "alice's record relabelled as mallory's is refused")
    except kr.SealedRecordMismatchError as exc:
        print(f"   relabelled record -> {exc.code.name}: {exc}")
        check(True, "alice's record relabelled as mallory's is refused")

    step("DisableKey, ScheduleKeyDeletion, CancelKeyDeletion")
    kms.disable_key(key.key_id)
    try:
        kms.encrypt(key.key_id, b"x")
        check(False, "a disabled key refuses to encrypt")
    except kr.KeyDisabledError as exc:
        print(f"   disabled -> {exc.code.name}: {exc}")
        check(True, "a disabled key refuses to encrypt")
    pending = kms.schedule_key_deletion(key.key_id, pending_window_days=7)
    print(f"   deletion scheduled for {pending.deletion_time:%Y-%m-%d}")
    check(kms.cancel_key_deletion(key.key_id).state == "DISABLED", "cancelled deletion leaves the key disabled")
    check(len(list(kms.iter_keys())) == 1, "ListKeys shows the tenant's one key")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="keyrelay-demo-") as tmp:
        state = Path(tmp)
        step(f"Set-up: a two-slot SoftHSM dev pool in {state}")
        try:
            conf = devsetup.write_softhsm_conf(state)
        except OSError as exc:
            print(f"cannot prepare the demo state dir: {exc}", file=sys.stderr)
            return 1
        env = devsetup.dev_environment(conf)
        port = devsetup.free_port()
        config = devsetup.write_node_config(
            state / "node.toml", tokens=["demo-a", "demo-b"], listen=f"127.0.0.1:{port}", store_path="node.db"
        )
        print("   " + devsetup.hsm_init(config, env).strip().replace("\n", "\n   "))
        node = devsetup.NodeProcess(config, env, state / "node.log", port)
        print(f"   starting `keyrelay node --config {config.name}` on 127.0.0.1:{port} ...")
        try:
            node.start()
        except (RuntimeError, TimeoutError) as exc:
            print(f"the node did not start: {exc}\n--- node log ---\n{(state / 'node.log').read_text()}", file=sys.stderr)
            node.kill()
            return 1
        try:
            with kr.KmsClient(node.target, tenant="demo") as kms:
                tour(kms)
        finally:
            step("Stopping the node with SIGTERM")
            status = node.terminate()
            check(status == 0, f"the node drained and exited with status {status}")
    if _failures:
        print(f"\ndemo FAILED: {len(_failures)} check(s) did not hold: {'; '.join(_failures)}")
        return 1
    print("\ndemo passed: every check held")
    return 0


if __name__ == "__main__":
    sys.exit(main())
