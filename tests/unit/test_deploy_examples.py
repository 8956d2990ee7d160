"""The example configs in deploy/ load and validate, set every config key that applies to them,
fit together as one deployment, and every key is documented in the README."""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from pathlib import Path

import pytest

from foundation.config import config_keys
from kms_gateway.config import GatewayConfig, load_gateway_config
from kms_node.config import NodeConfig, load_node_config
from relay.config import RelayConfig, load_relay_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
README = DEPLOY.parent / "README.md"

# Keys that do not apply to a node's mode (setting them there is an error or has no effect).
NOT_FOR_MODE = {
    "node-shared.toml": {"instance_id"} | {k for k in config_keys(NodeConfig) if k.startswith("private_endpoint.")},
    "node-dedicated.toml": {k for k in config_keys(NodeConfig) if k.startswith("ca.")},
}


def written_keys(cls: type, data: dict, prefix: str = "") -> set[str]:
    """The dotted config keys a TOML document sets: sections are expanded, table-valued keys
    (such as the gateway's `listeners`) count as one key."""
    hints = typing.get_type_hints(cls)
    keys: set[str] = set()
    for name, value in data.items():
        tp = hints.get(name)
        if tp is not None and dataclasses.is_dataclass(tp) and isinstance(value, dict):
            keys |= written_keys(tp, value, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def read_toml(name: str) -> dict:
    with open(DEPLOY / name, "rb") as fh:
        return tomllib.load(fh)


def load_node(name: str, monkeypatch) -> NodeConfig:
    monkeypatch.setenv("KEYRELAY_HSM_PIN", "unused")
    return load_node_config(str(DEPLOY / name))


@pytest.mark.parametrize("name,mode", [("node-shared.toml", "shared"), ("node-dedicated.toml", "dedicated")])
def test_example_config_loads(name, mode, monkeypatch):
    config = load_node(name, monkeypatch)
    assert config.mode == mode
    assert len(config.hsm.tokens) == 2
    assert config.tls.cert and config.metrics_listen


@pytest.mark.parametrize("name", ["node-shared.toml", "node-dedicated.toml"])
def test_example_config_sets_every_key(name):
    expected = set(config_keys(NodeConfig)) - NOT_FOR_MODE[name]
    assert written_keys(NodeConfig, read_toml(name)) == expected


def test_node_examples_together_cover_every_key():
    covered = set()
    for name in NOT_FOR_MODE:
        covered |= written_keys(NodeConfig, read_toml(name))
    assert covered == set(config_keys(NodeConfig))


def test_readme_documents_every_node_config_key():
    readme = README.read_text()
    for key in config_keys(NodeConfig):
        assert f"`{key}`" in readme, f"README's node config table misses {key}"


def test_gateway_example_loads():
    # The certificate files do not exist here: validation checks only that they are named.
    config = load_gateway_config(str(DEPLOY / "gateway.toml"))
    assert len(config.listeners) >= 2
    assert config.zone_cidrs
    assert len(config.shared_nodes) >= 2
    assert config.metrics_listen
    assert config.rate_limit.requests_per_second > 0


def test_gateway_example_sets_every_key():
    assert written_keys(GatewayConfig, read_toml("gateway.toml")) == set(config_keys(GatewayConfig))


def test_readme_documents_every_gateway_config_key():
    readme = README.read_text()
    for key in config_keys(GatewayConfig):
        assert f"`{key}`" in readme, f"README's gateway config table misses {key}"


def test_relay_example_loads_and_sets_every_key():
    config = load_relay_config(str(DEPLOY / "relay.toml"))
    assert config.tls.cert and config.metrics_listen
    assert written_keys(RelayConfig, read_toml("relay.toml")) == set(config_keys(RelayConfig))


def test_readme_documents_every_relay_config_key():
    readme = README.read_text()
    for key in config_keys(RelayConfig):
        assert f"`{key}`" in readme, f"README's relay config table misses {key}"


def test_examples_are_one_deployment(monkeypatch):
    gateway = load_gateway_config(str(DEPLOY / "gateway.toml"))
    shared = load_node("node-shared.toml", monkeypatch)
    dedicated = load_node("node-dedicated.toml", monkeypatch)
    # The gateway reaches the shared KMS, and the private endpoint checks credentials with it.
    assert shared.listen in gateway.shared_nodes
    assert set(dedicated.private_endpoint.registry_nodes) == set(gateway.shared_nodes)
    # One internal CA for gateway <-> node mutual TLS; the nodes admit the gateway by its name.
    assert gateway.internal.ca == shared.tls.client_ca == dedicated.tls.client_ca
    assert Path(gateway.internal.cert).stem == shared.tls.gateway_cn == dedicated.tls.gateway_cn
    # A dedicated node presents a keyrelay-node* certificate to the shared KMS's credential checks.
    assert Path(dedicated.tls.cert).stem.startswith("keyrelay-node")
    # One KMS CA: it signs credentials on the shared node; the gateway and private endpoint trust it.
    assert gateway.tls.client_ca == dedicated.private_endpoint.client_ca
    assert shared.ca.cert and shared.ca.key and shared.ca.bootstrap_dir
    # Distinct metrics ports per host.
    relay = load_relay_config(str(DEPLOY / "relay.toml"))
    assert len({gateway.metrics_listen, shared.metrics_listen, dedicated.metrics_listen, relay.metrics_listen}) == 4
