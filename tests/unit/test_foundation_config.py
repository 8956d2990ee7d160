"""Unit tests of foundation/config.py: TOML + environment + overrides, conversion and secrets."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from foundation.config import (
    ConfigError,
    Secret,
    config_keys,
    load,
    parse_overrides,
    read_secret,
    resolve_path,
)

PREFIX = "KRTEST"


@dataclass(frozen=True)
class ServerSection:
    host: str = "127.0.0.1"
    port: int = 7000
    timeout: float = 1.5
    tls: bool = False
    peers: tuple[str, ...] = ()


@dataclass(frozen=True)
class SampleConfig:
    name: str = "default"
    retries: int = 3
    label: str | None = None
    server: ServerSection = field(default_factory=ServerSection)


def write(tmp_path, text: str):
    path = tmp_path / "sample.toml"
    path.write_text(text)
    return path


# -- precedence -------------------------------------------------------------------------------


def test_defaults_only_without_file_env_or_overrides():
    """With no file, no environment and no overrides every field keeps its default."""
    assert load(SampleConfig, None, env_prefix=PREFIX, environ={}) == SampleConfig()


def test_toml_values_are_read_and_converted(tmp_path):
    """TOML values land in the right fields and sections, with their types."""
    path = write(
        tmp_path,
        'name = "n1"\nretries = 5\n[server]\nport = 8000\ntimeout = 2\ntls = true\npeers = ["a", "b"]\n',
    )
    config = load(SampleConfig, path, env_prefix=PREFIX, environ={})
    assert config.name == "n1"
    assert config.retries == 5
    assert config.server.port == 8000
    assert config.server.timeout == 2.0 and isinstance(config.server.timeout, float)
    assert config.server.tls is True
    assert config.server.peers == ("a", "b")
    assert config.server.host == "127.0.0.1"  # untouched key keeps its default


def test_env_overrides_toml_and_overrides_beat_env(tmp_path):
    """Precedence is TOML < environment < --set overrides, key by key."""
    path = write(tmp_path, 'name = "from-toml"\nretries = 1\n[server]\nport = 1\n')
    environ = {f"{PREFIX}_SERVER_PORT": "2", f"{PREFIX}_NAME": "from-env"}

    from_env = load(SampleConfig, path, env_prefix=PREFIX, environ=environ)
    assert (from_env.name, from_env.retries, from_env.server.port) == ("from-env", 1, 2)

    overridden = load(SampleConfig, path, env_prefix=PREFIX, environ=environ, overrides={"server.port": "3"})
    assert (overridden.name, overridden.retries, overridden.server.port) == ("from-env", 1, 3)


def test_env_list_is_comma_separated_and_trimmed():
    """`PREFIX_SECTION_KEY="a, b,,c"` gives a tuple of the non-empty trimmed items."""
    config = load(SampleConfig, None, env_prefix=PREFIX, environ={f"{PREFIX}_SERVER_PEERS": " a, b,,c "})
    assert config.server.peers == ("a", "b", "c")


def test_env_of_another_prefix_is_ignored():
    """Only variables with the daemon's prefix are read."""
    config = load(SampleConfig, None, env_prefix=PREFIX, environ={"OTHER_SERVER_PORT": "9", "KRTESTX_NAME": "x"})
    assert config == SampleConfig()


def test_env_bool_spellings():
    """Booleans accept the usual spellings from the environment."""
    for text, expected in [("yes", True), ("ON", True), ("1", True), ("off", False), ("No", False), ("0", False)]:
        config = load(SampleConfig, None, env_prefix=PREFIX, environ={f"{PREFIX}_SERVER_TLS": text})
        assert config.server.tls is expected, text


def test_optional_empty_string_means_none():
    """An empty string for an optional key gives None; anything else the value."""
    assert load(SampleConfig, None, env_prefix=PREFIX, environ={f"{PREFIX}_LABEL": ""}).label is None
    assert load(SampleConfig, None, env_prefix=PREFIX, environ={f"{PREFIX}_LABEL": "x"}).label == "x"


def test_environ_defaults_to_process_environment(monkeypatch):
    """Without `environ`, os.environ is read."""
    monkeypatch.setenv(f"{PREFIX}_RETRIES", "9")
    assert load(SampleConfig, None, env_prefix=PREFIX).retries == 9


# -- errors ---------------------------------------------------------------------------------------


def test_toml_type_error_names_file_and_key(tmp_path):
    """A TOML value of the wrong type is reported with the file and the dotted key."""
    path = write(tmp_path, '[server]\nport = "abc"\n')
    with pytest.raises(ConfigError) as info:
        load(SampleConfig, path, env_prefix=PREFIX, environ={})
    message = str(info.value)
    assert "server.port" in message and "integer" in message and "'abc'" in message
    assert str(path) in message


@pytest.mark.parametrize(
    ("variable", "value", "key", "words"),
    [
        ("SERVER_PORT", "eighty", "server.port", "integer"),
        ("SERVER_TIMEOUT", "soon", "server.timeout", "number"),
        ("SERVER_TLS", "maybe", "server.tls", "true or false"),
        ("RETRIES", "1.5", "retries", "integer"),
    ],
)
def test_env_type_error_names_key(variable, value, key, words):
    """A bad environment value is reported under the config key it sets."""
    with pytest.raises(ConfigError) as info:
        load(SampleConfig, None, env_prefix=PREFIX, environ={f"{PREFIX}_{variable}": value})
    assert key in str(info.value)
    assert words in str(info.value)


def test_bool_is_not_a_number(tmp_path):
    """`port = true` is refused rather than read as 1."""
    path = write(tmp_path, "[server]\nport = true\n")
    with pytest.raises(ConfigError, match="server.port must be an integer"):
        load(SampleConfig, path, env_prefix=PREFIX, environ={})


def test_table_for_a_string_is_refused(tmp_path):
    """A table where a string belongs is refused naming the key."""
    path = write(tmp_path, "[name]\nx = 1\n")
    with pytest.raises(ConfigError, match="name must be a string"):
        load(SampleConfig, path, env_prefix=PREFIX, environ={})


def test_scalar_for_a_section_is_refused(tmp_path):
    """`server = 3` is refused: server is a section."""
    path = write(tmp_path, "server = 3\n")
    with pytest.raises(ConfigError, match="server must be a section"):
        load(SampleConfig, path, env_prefix=PREFIX, environ={})


def test_toml_float_for_an_integer_key_is_refused(tmp_path):
    """An integer key given a non-integral float is a mistake, whichever source it comes from."""
    path = write(tmp_path, "retries = 2.9\n")
    with pytest.raises(ConfigError, match="retries"):
        load(SampleConfig, path, env_prefix=PREFIX, environ={})


def test_unknown_top_level_key_lists_known_keys(tmp_path):
    """An unknown key is refused; the message names it and every known dotted key."""
    path = write(tmp_path, "bogus = 1\n")
    with pytest.raises(ConfigError) as info:
        load(SampleConfig, path, env_prefix=PREFIX, environ={})
    message = str(info.value)
    assert "bogus" in message
    for key in ("name", "retries", "label", "server.host", "server.port", "server.timeout", "server.tls", "server.peers"):
        assert key in message


def test_unknown_key_in_a_section_is_named_with_its_section(tmp_path):
    """An unknown key inside [server] is reported as server.<key> with the section's known keys."""
    path = write(tmp_path, "[server]\nprot = 1\n")
    with pytest.raises(ConfigError) as info:
        load(SampleConfig, path, env_prefix=PREFIX, environ={})
    message = str(info.value)
    assert "server.prot" in message
    assert "server.port" in message


def test_unknown_override_is_refused_with_known_keys():
    """`--set` of a key that does not exist is refused before anything is built."""
    with pytest.raises(ConfigError) as info:
        load(SampleConfig, None, env_prefix=PREFIX, environ={}, overrides={"server.prot": "1"})
    assert "--set server.prot" in str(info.value)
    assert "server.port" in str(info.value)


def test_missing_and_invalid_files(tmp_path):
    """A missing file and a file that is not TOML are both reported with the path."""
    with pytest.raises(ConfigError, match="does not exist"):
        load(SampleConfig, tmp_path / "nope.toml", env_prefix=PREFIX, environ={})
    bad = write(tmp_path, "name = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(SampleConfig, bad, env_prefix=PREFIX, environ={})


def test_config_keys_expands_sections():
    """config_keys lists every dotted key, sections expanded, in declaration order."""
    assert config_keys(SampleConfig) == [
        "name", "retries", "label", "server.host", "server.port", "server.timeout", "server.tls", "server.peers",
    ]


# -- overrides and paths ---------------------------------------------------------------------------


def test_parse_overrides():
    """`--set k=v` pairs become a dict; the value may itself hold '='."""
    assert parse_overrides(["server.port=1", "name=a=b", "label="]) == {"server.port": "1", "name": "a=b", "label": ""}
    assert parse_overrides(None) == {}
    for bad in ("novalue", "=x"):
        with pytest.raises(ConfigError, match="section.key=value"):
            parse_overrides([bad])


def test_resolve_path(tmp_path):
    """Relative paths are resolved against the config file's folder; others are left alone."""
    config_file = tmp_path / "etc" / "node.toml"
    assert resolve_path(config_file, "data/x.db") == str(tmp_path / "etc" / "data" / "x.db")
    assert resolve_path(config_file, "/abs/x.db") == "/abs/x.db"
    assert resolve_path(None, "rel.db") == "rel.db"
    assert resolve_path(config_file, "") == ""


# -- secrets ------------------------------------------------------------------------------------


def test_secret_never_shows_its_value():
    """repr, str, format and containers never show the value; reveal() does."""
    secret = Secret("hunter2-pin")
    for text in (repr(secret), str(secret), f"{secret}", f"{secret!r}", repr([secret]), repr({"pin": secret}), "%s" % secret):
        assert "hunter2" not in text
        assert "***" in text
    assert secret.reveal() == "hunter2-pin"


def test_read_secret_from_env_first(tmp_path):
    """The environment variable wins over the file."""
    pin_file = tmp_path / "pin"
    pin_file.write_text("from-file\n")
    secret = read_secret("HSM user PIN", "MY_PIN", str(pin_file), {"MY_PIN": "from-env"})
    assert secret.reveal() == "from-env"


def test_read_secret_from_file_when_env_unset_or_empty(tmp_path):
    """An unset or empty variable falls back to the file, whose content is stripped."""
    pin_file = tmp_path / "pin"
    pin_file.write_text("  from-file \n")
    assert read_secret("PIN", "MY_PIN", str(pin_file), {}).reveal() == "from-file"
    assert read_secret("PIN", "MY_PIN", str(pin_file), {"MY_PIN": ""}).reveal() == "from-file"


def test_read_secret_missing_names_the_variable():
    """With neither source the message names what is missing and the variable to export."""
    with pytest.raises(ConfigError) as info:
        read_secret("HSM user PIN", "KEYRELAY_HSM_PIN", "", {})
    assert "HSM user PIN" in str(info.value)
    assert "KEYRELAY_HSM_PIN" in str(info.value)


def test_read_secret_unreadable_or_empty_file(tmp_path):
    """A missing file and an empty file are reported with the path (and never a value)."""
    missing = tmp_path / "missing"
    with pytest.raises(ConfigError) as info:
        read_secret("PIN", "MY_PIN", str(missing), {})
    assert str(missing) in str(info.value) and "cannot read" in str(info.value)

    empty = tmp_path / "empty"
    empty.write_text("  \n")
    with pytest.raises(ConfigError, match="is empty"):
        read_secret("PIN", "MY_PIN", str(empty), {})
