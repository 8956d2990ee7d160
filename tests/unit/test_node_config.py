"""Unit tests of kms_node/config.py: loading and validating a node's config."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from foundation.config import ConfigError
from kms_node.config import HsmConfig, NodeConfig, StoreConfig, load_node_config


@pytest.fixture
def module(tmp_path) -> str:
    """A file standing in for the PKCS#11 library (validate only checks it exists)."""
    path = tmp_path / "libfakehsm.so"
    path.write_bytes(b"")
    return str(path)


def write_config(tmp_path, text: str, name: str = "node.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def good_toml(module: str, extra_top: str = "", extra_hsm: str = "", store: str = "") -> str:
    return (
        f"{extra_top}\n"
        f'[hsm]\nmodule = "{module}"\ntokens = ["kr-a", "kr-b"]\n{extra_hsm}\n'
        f"{store}\n"
    )


def valid(module: str, **changes) -> NodeConfig:
    """A valid config built directly, with top-level changes."""
    return replace(NodeConfig(hsm=HsmConfig(module=module, tokens=("kr-a",))), **changes)


def test_good_config_loads(tmp_path, module):
    """A minimal shared config loads with defaults for everything it leaves out."""
    config = load_node_config(write_config(tmp_path, good_toml(module)), environ={})
    assert config.mode == "shared"
    assert config.hsm.tokens == ("kr-a", "kr-b")
    assert config.hsm.module == module
    assert config.hsm.pin_env == "KEYRELAY_HSM_PIN"


def test_tokens_from_environment(tmp_path, module):
    """`KEYRELAY_NODE_HSM_TOKENS="a,b"` replaces the file's tokens."""
    path = write_config(tmp_path, good_toml(module))
    config = load_node_config(path, environ={"KEYRELAY_NODE_HSM_TOKENS": "x, y"})
    assert config.hsm.tokens == ("x", "y")


def test_config_from_environment_and_overrides_only(module):
    """Without a file, environment and --set overrides are enough (overrides winning)."""
    config = load_node_config(
        None,
        environ={"KEYRELAY_NODE_HSM_MODULE": module, "KEYRELAY_NODE_HSM_TOKENS": "a", "KEYRELAY_NODE_MODE": "shared"},
        overrides={"mode": "dedicated", "instance_id": "acme-1"},
    )
    assert (config.mode, config.instance_id, config.hsm.tokens) == ("dedicated", "acme-1", ("a",))


def test_bad_mode(tmp_path, module):
    """An unknown mode is refused, naming both valid modes and the bad value."""
    path = write_config(tmp_path, good_toml(module, extra_top='mode = "cluster"'))
    with pytest.raises(ConfigError) as info:
        load_node_config(path, environ={})
    assert "mode must be 'shared' or 'dedicated'" in str(info.value)
    assert "'cluster'" in str(info.value)


def test_dedicated_needs_instance_id(tmp_path, module):
    """A dedicated node without instance_id is refused with the rule for instance ids."""
    path = write_config(tmp_path, good_toml(module, extra_top='mode = "dedicated"'))
    with pytest.raises(ConfigError, match="dedicated node needs instance_id"):
        load_node_config(path, environ={})


@pytest.mark.parametrize("instance_id", ["Acme", "-acme", "acme-", "a_b", "a" * 64, "a.b"])
def test_dedicated_bad_instance_ids(module, instance_id):
    """Instance ids must be 1-63 of a-z 0-9 '-', not starting or ending with '-'."""
    with pytest.raises(ConfigError, match="instance_id"):
        valid(module, mode="dedicated", instance_id=instance_id).validate()


@pytest.mark.parametrize("instance_id", ["a", "acme-1", "a" * 63, "0x"])
def test_dedicated_good_instance_ids(module, instance_id):
    """Well-formed instance ids pass."""
    valid(module, mode="dedicated", instance_id=instance_id).validate()


def test_instance_id_with_trailing_newline_is_refused(module):
    """'acme\\n' is not 1-63 characters of a-z 0-9 '-'."""
    with pytest.raises(ConfigError):
        valid(module, mode="dedicated", instance_id="acme\n").validate()


def test_shared_refuses_instance_id(module):
    """instance_id on a shared node is a mistake and is refused."""
    with pytest.raises(ConfigError, match="only for mode = 'dedicated'"):
        valid(module, instance_id="acme").validate()


def test_missing_tokens(tmp_path, module):
    """A config without hsm.tokens is refused with an example of what to write."""
    path = write_config(tmp_path, f'[hsm]\nmodule = "{module}"\n')
    with pytest.raises(ConfigError, match="hsm.tokens is empty"):
        load_node_config(path, environ={})


def test_duplicate_tokens(module):
    """The same token listed twice is refused."""
    with pytest.raises(ConfigError, match="twice"):
        NodeConfig(hsm=HsmConfig(module=module, tokens=("a", "a"))).validate()


@pytest.mark.parametrize("key", ["pin", "so_pin", "user_pin"])
def test_inline_pin_is_refused_without_echoing_it(tmp_path, module, key):
    """A PIN written in the TOML is refused; the message says where a PIN goes and never shows it."""
    path = write_config(tmp_path, good_toml(module, extra_hsm=f'{key} = "98765432"'))
    with pytest.raises(ConfigError) as info:
        load_node_config(path, environ={})
    message = str(info.value)
    assert "must not be written in the config" in message
    assert "hsm.pin_env" in message and "hsm.pin_file" in message
    assert "98765432" not in message


def test_relative_paths_resolve_against_config_folder(tmp_path, module):
    """store.path and pin files given relative are resolved against the config file's folder."""
    folder = tmp_path / "etc" / "keyrelay"
    folder.mkdir(parents=True)
    path = write_config(
        folder,
        good_toml(module, extra_hsm='pin_file = "secrets/pin"', store='[store]\npath = "data/node.db"'),
    )
    config = load_node_config(path, environ={})
    assert config.store.path == str(folder / "data" / "node.db")
    assert config.hsm.pin_file == str(folder / "secrets" / "pin")
    assert config.hsm.so_pin_file == ""  # empty stays empty


def test_default_store_path_is_next_to_the_config(tmp_path, module):
    """The default store file name is also relative to the config's folder."""
    config = load_node_config(write_config(tmp_path, good_toml(module)), environ={})
    assert Path(config.store.path) == tmp_path / "keyrelay-node.db"


def test_absolute_store_path_is_kept(tmp_path, module):
    """An absolute store.path is used as written."""
    target = tmp_path / "elsewhere" / "n.db"
    path = write_config(tmp_path, good_toml(module, store=f'[store]\npath = "{target}"'))
    assert load_node_config(path, environ={}).store.path == str(target)


def test_module_that_does_not_exist(tmp_path):
    """A PKCS#11 module path that does not exist is refused, naming the path and a fix."""
    missing = str(tmp_path / "no-such-lib.so")
    path = write_config(tmp_path, good_toml(missing))
    with pytest.raises(ConfigError) as info:
        load_node_config(path, environ={})
    assert missing in str(info.value)
    assert "does not exist" in str(info.value)
    assert "softhsm2" in str(info.value)


def test_unknown_key_in_node_config(tmp_path, module):
    """A misspelt key is refused naming the known keys of its section."""
    path = write_config(tmp_path, good_toml(module, extra_hsm="sesions_per_slot = 2"))
    with pytest.raises(ConfigError) as info:
        load_node_config(path, environ={})
    assert "hsm.sesions_per_slot" in str(info.value)
    assert "hsm.sessions_per_slot" in str(info.value)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"listen": "7101"}, "listen must be host:port"),
        ({"listen": "localhost:http"}, "listen must be host:port"),
        ({"listen": "localhost:70000"}, "listen must be host:port"),
        ({"log_level": "verbose"}, "log_level"),
        ({"shutdown_grace_seconds": -1.0}, "shutdown_grace_seconds"),
        ({"deletion_sweep_seconds": 0.0}, "deletion_sweep_seconds"),
        ({"store": StoreConfig(path="")}, "store.path is empty"),
    ],
)
def test_other_validation_messages(module, changes, words):
    """Each invalid top-level value is refused naming its key."""
    with pytest.raises(ConfigError, match=words):
        valid(module, **changes).validate()


@pytest.mark.parametrize(
    ("hsm_changes", "words"),
    [
        ({"sessions_per_slot": 0}, "sessions_per_slot"),
        ({"threads": -1}, "hsm.threads"),
        ({"slot_retry_seconds": 0.0}, "hsm.slot_retry_seconds"),
        ({"checkout_timeout_seconds": -1.0}, "hsm.checkout_timeout_seconds"),
        ({"pin_env": "", "pin_file": ""}, "hsm.pin_env or hsm.pin_file"),
    ],
)
def test_hsm_validation_messages(module, hsm_changes, words):
    """Each invalid [hsm] value is refused naming its key."""
    config = valid(module)
    with pytest.raises(ConfigError, match=words):
        replace(config, hsm=replace(config.hsm, **hsm_changes)).validate()


def test_user_pin_from_named_variable(module):
    """user_pin reads the variable named by hsm.pin_env, and a missing one is named in the error."""
    config = valid(module)
    assert config.user_pin({"KEYRELAY_HSM_PIN": "1234"}).reveal() == "1234"
    with pytest.raises(ConfigError, match="KEYRELAY_HSM_PIN"):
        config.user_pin({"UNRELATED": "x"})


def test_user_pin_with_an_empty_environment_does_not_read_the_process_env(module, monkeypatch):
    """An explicit empty environment must not fall back to os.environ."""
    monkeypatch.setenv("KEYRELAY_HSM_PIN", "from-the-process")
    with pytest.raises(ConfigError):
        valid(module).user_pin({})
