"""A Node.js application and the Python SDK on one keyrelay: the Node client (tests/e2e/node_client,
@grpc/grpc-js with the .proto files loaded at run time, mutual TLS) creates keys, encrypts and
decrypts through the gateway of a `keyrelay dev up` cluster, and each side decrypts what the other
encrypted, under an encryption context. Errors reach Node as the status code and the
`keyrelay-error-reason` trailer that errors.proto promises.

The set-up installs the Node client's packages (`npm ci`) once per session; without Node.js and
npm the tests fail under CI and are skipped elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from client_sdk import KmsClient
from client_sdk.credentials import load_profile
from foundation.errors import CiphertextAuthenticationError

pytestmark = pytest.mark.e2e

NODE_CLIENT = Path(__file__).parent / "node_client"
#: Written into node_modules after a successful `npm ci`: the hash of the lock it installed.
INSTALL_STAMP = NODE_CLIENT / "node_modules" / ".keyrelay-installed"
CONTEXT = {"purpose": "node-interop", "order": "4242"}
PLAINTEXT = b"card 4242 \x00\x01\xfe\xff \xc3\xa9"  # bytes that survive no text conversion


def _require_node() -> None:
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        message = (
            f"{' and '.join(missing)} not found: the Node.js interop test needs Node.js 18+ and npm "
            "(`apt-get install nodejs npm`)"
        )
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the e2e tests: {message}")
        pytest.skip(message)


def _install_packages() -> None:
    """`npm ci` in the client's folder, unless node_modules already holds what the lock names."""
    lock = hashlib.sha256((NODE_CLIENT / "package-lock.json").read_bytes()).hexdigest()
    if INSTALL_STAMP.is_file() and INSTALL_STAMP.read_text().strip() == lock:
        return
    done = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_CLIENT, capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        pytest.fail(f"`npm ci` in {NODE_CLIENT} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    INSTALL_STAMP.write_text(lock + "\n")


class NodeClient:
    """Runs tests/e2e/node_client/client.js with a profile's endpoint and credential."""

    def __init__(self, script: Path) -> None:
        self.script = script

    def run(self, profile: Path, *calls: dict) -> list[dict]:
        """Run `calls` ({service, method, request}) in one Node process; a result per call."""
        loaded = load_profile(profile)  # the same endpoint and credential files the SDK uses
        credentials = loaded.credentials
        assert credentials is not None and credentials.client_cert is not None, f"{profile} has no TLS credential"
        instructions = {
            "endpoint": loaded.endpoint,
            "ca": credentials.ca_cert.decode(),
            "cert": credentials.client_cert.decode(),
            "key": credentials.client_key.decode(),
            "timeout": loaded.timeout * 2,
            "calls": list(calls),
        }
        done = subprocess.run(
            ["node", "--no-deprecation", str(self.script)],
            input=json.dumps(instructions), capture_output=True, text=True, timeout=120,
        )
        if done.returncode != 0:
            pytest.fail(f"the Node client failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        results = json.loads(done.stdout)["results"]
        assert len(results) == len(calls)
        return results

    def call(self, profile: Path, method: str, request: dict) -> dict:
        """One KeyManagementService call; its response, or a test failure naming the error."""
        [result] = self.run(profile, {"service": "KeyManagementService", "method": method, "request": request})
        assert result["ok"], f"{method} from Node failed: {result}"
        return result["response"]


@pytest.fixture(scope="session")
def node():
    _require_node()
    _install_packages()
    return NodeClient(NODE_CLIENT / "client.js")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _alias(what: str) -> str:
    return f"alias/node-interop-{what}-{uuid.uuid4().hex[:8]}"


def test_node_creates_a_key_and_encrypts_python_decrypts(node, dev_stack):
    profiles = dev_stack.profiles
    alias = _alias("node-key")
    created = node.call(profiles["admin"], "CreateKey", {"alias": alias, "description": "made by Node"})
    key = created["key_metadata"]
    assert key["state"] == "KEY_STATE_ENABLED"
    assert key["aliases"] == [alias]

    encrypted = node.call(
        profiles["app"], "Encrypt", {"key_id": alias, "plaintext": _b64(PLAINTEXT), "encryption_context": CONTEXT}
    )
    assert encrypted["key_id"] == key["key_id"]
    assert encrypted["key_version"] == 1
    blob = base64.b64decode(encrypted["ciphertext_blob"])

    with KmsClient(profile=load_profile(profiles["app"])) as kms:
        result = kms.decrypt(blob, context=CONTEXT)
        assert result.plaintext == PLAINTEXT
        assert result.key_id == key["key_id"]
        assert result.key_version == 1
        # Node bound the context into the blob: another one does not decrypt it.
        with pytest.raises(CiphertextAuthenticationError):
            kms.decrypt(blob, context={**CONTEXT, "order": "4243"})


def test_python_encrypts_node_decrypts(node, dev_stack):
    profiles = dev_stack.profiles
    with KmsClient(profile=load_profile(profiles["admin"])) as admin:
        key = admin.create_key(description="made by Python", alias=_alias("python-key"))
    with KmsClient(profile=load_profile(profiles["app"])) as kms:
        encrypted = kms.encrypt(key.key_id, PLAINTEXT, context=CONTEXT)

    decrypted = node.call(
        profiles["app"], "Decrypt",
        {"ciphertext_blob": _b64(encrypted.ciphertext_blob), "encryption_context": CONTEXT},
    )
    assert base64.b64decode(decrypted["plaintext"]) == PLAINTEXT
    assert decrypted["key_id"] == key.key_id
    assert decrypted["key_version"] == encrypted.key_version == 1


def _flip_last_byte(blob: bytes) -> bytes:
    return blob[:-1] + bytes([blob[-1] ^ 0x01])  # inside the GCM tag


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("tag", "CIPHERTEXT_AUTHENTICATION_FAILED"),
        ("context", "CIPHERTEXT_AUTHENTICATION_FAILED"),
        ("truncated", "MALFORMED_CIPHERTEXT"),
    ],
)
def test_node_sees_status_and_reason_of_a_failed_decrypt(node, dev_stack, change, reason):
    profiles = dev_stack.profiles
    with KmsClient(profile=load_profile(profiles["admin"])) as admin:
        key = admin.create_key(description="tamper target", alias=_alias("tamper"))
    with KmsClient(profile=load_profile(profiles["app"])) as kms:
        blob = kms.encrypt(key.key_id, PLAINTEXT, context=CONTEXT).ciphertext_blob

    context = CONTEXT
    if change == "tag":
        blob = _flip_last_byte(blob)
    elif change == "context":
        context = {**CONTEXT, "order": "4243"}
    else:
        blob = blob[:30]  # the key id is intact (the gateway can route it), the header is not
    [result] = node.run(
        profiles["app"],
        {
            "service": "KeyManagementService",
            "method": "Decrypt",
            "request": {"ciphertext_blob": _b64(blob), "encryption_context": context},
        },
    )
    assert not result["ok"], f"Node decrypted a {change} blob: {result}"
    assert result["code_name"] == "INVALID_ARGUMENT"
    assert result["code"] == 3
    assert result["trailers"].get("keyrelay-error-reason") == reason
    assert "card 4242" not in result["details"]  # errors never carry plaintext
