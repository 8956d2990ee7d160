"""The example configs in deploy/ load and validate, and document every node config key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from foundation.config import config_keys
from kms_node.config import NodeConfig, load_node_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.mark.parametrize("name,mode", [("node-shared.toml", "shared"), ("node-dedicated.toml", "dedicated")])
def test_example_config_loads(name, mode, monkeypatch):
    monkeypatch.setenv("KEYRELAY_HSM_PIN", "unused")
    config = load_node_config(str(DEPLOY / name))
    assert config.mode == mode
    assert len(config.hsm.tokens) == 2


@pytest.mark.parametrize("name", ["node-shared.toml", "node-dedicated.toml"])
def test_example_config_sets_every_key(name):
    with open(DEPLOY / name, "rb") as fh:
        data = tomllib.load(fh)
    written = {f"{section}.{key}" if isinstance(values, dict) else section
               for section, values in data.items()
               for key in (values if isinstance(values, dict) else [None])}
    expected = set(config_keys(NodeConfig)) - ({"instance_id"} if name == "node-shared.toml" else set())
    assert written == expected


def test_readme_documents_every_node_config_key():
    readme = (DEPLOY.parent / "README.md").read_text()
    for key in config_keys(NodeConfig):
        assert f"`{key}`" in readme, f"README's config table misses {key}"
