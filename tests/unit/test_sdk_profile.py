"""Unit tests of client_sdk/credentials.py: profiles, credential bundles, and how clients use them
(channels are created but never connected)."""

from __future__ import annotations

import stat
from datetime import datetime, timezone

import pytest

import client_sdk as kr
from client_sdk.credentials import CredentialBundle, Profile, ProfileError, load_profile, write_profile
from foundation.pki import CertificateAuthority, certificate_pem, write_credential


@pytest.fixture(scope="module")
def pems(tmp_path_factory):
    """(ca_pem, cert_pem, key_pem, other_key_pem) from a throwaway CA."""
    ca = CertificateAuthority.create(tmp_path_factory.mktemp("ca"), "test-ca")
    cert, key = ca.issue("admin")
    _, other_key = ca.issue("other")
    return ca.certificate_pem, certificate_pem(cert), key, other_key


@pytest.fixture
def credential_dir(tmp_path, pems):
    ca_pem, cert_pem, key_pem, _ = pems
    write_credential(tmp_path / "creds", "admin", cert_pem, key_pem, ca_pem)
    return tmp_path / "creds"


def write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


PROFILE = """\
endpoint = "127.0.0.1:7443"
ca = "ca.crt"
cert = "admin.crt"
key = "admin.key"
timeout = 5
[private_endpoints]
dev-dedicated = "127.0.0.1:7202"
"""


def test_load_resolves_relative_paths_against_the_profile_folder(credential_dir, pems, tmp_path, monkeypatch):
    path = write(credential_dir / "profile.toml", PROFILE)
    monkeypatch.chdir(tmp_path)  # not the profile's folder
    profile = load_profile(path)
    ca_pem, cert_pem, key_pem, _ = pems
    assert profile.endpoint == "127.0.0.1:7443"
    assert profile.credentials == CredentialBundle(ca_pem, cert_pem, key_pem)
    assert profile.timeout == 5.0
    assert profile.private_endpoints == {"dev-dedicated": "127.0.0.1:7202"}
    assert profile.tenant is None
    assert profile.path == path


def test_absolute_paths_stay_as_they_are(credential_dir, tmp_path):
    path = write(
        tmp_path / "elsewhere" / "p.toml",
        f'endpoint = "gw:7443"\nca = "{credential_dir / "ca.crt"}"\n'
        f'cert = "{credential_dir / "admin.crt"}"\nkey = "{credential_dir / "admin.key"}"\n',
    )
    profile = load_profile(path)
    assert profile.credentials.client_cert is not None
    assert profile.timeout == 10.0
    assert profile.private_endpoints == {}


def test_plain_text_profile_with_tenant(tmp_path):
    profile = load_profile(write(tmp_path / "p.toml", 'endpoint = "127.0.0.1:7101"\ntenant = "acme"\n'))
    assert profile.credentials is None
    assert profile.tenant == "acme"


def test_ca_only_profile(credential_dir):
    profile = load_profile(write(credential_dir / "p.toml", 'endpoint = "gw:7443"\nca = "ca.crt"\n'))
    assert profile.credentials.client_cert is None and profile.credentials.client_key is None


def test_unknown_keys_are_named_with_the_known_ones(tmp_path):
    path = write(tmp_path / "p.toml", 'endpoint = "gw:1"\ncertificate = "x"\nzone = "a"\n')
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    message = str(err.value)
    assert "certificate, zone" in message
    assert str(path) in message
    for known in ("endpoint", "ca", "cert", "key", "tenant", "timeout", "private_endpoints"):
        assert known in message


@pytest.mark.parametrize(
    "text, expected",
    [
        ('ca = "ca.crt"\n', "no endpoint"),
        ('endpoint = 7443\n', "endpoint = 7443"),
        ('endpoint = "gw:1"\ntimeout = 0\n', "positive number"),
        ('endpoint = "gw:1"\ntimeout = "fast"\n', "positive number"),
        ('endpoint = "gw:1"\nprivate_endpoints = "x"\n', "[private_endpoints]"),
        ('endpoint = "gw:1"\n[private_endpoints]\na = 1\n', "[private_endpoints]"),
        ('endpoint = "gw:1"\ncert = "admin.crt"\nkey = "admin.key"\n', "no ca"),
        ('endpoint = "gw:1"\nca = "ca.crt"\ncert = "admin.crt"\n', "without its key"),
        ('endpoint = "gw:1"\nca = "ca.crt"\nkey = "admin.key"\n', "without its cert"),
        ("endpoint = \n", "not valid TOML"),
    ],
)
def test_bad_values_are_explained(credential_dir, text, expected):
    path = write(credential_dir / "bad.toml", text)
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    assert expected in str(err.value)
    assert str(path) in str(err.value)


def test_missing_credential_file_is_named(credential_dir):
    (credential_dir / "admin.key").unlink()
    with pytest.raises(ProfileError) as err:
        load_profile(write(credential_dir / "profile.toml", PROFILE))
    assert str(credential_dir / "admin.key") in str(err.value)
    assert "No such file" in str(err.value)


def test_missing_profile_says_how_to_get_one(tmp_path):
    with pytest.raises(ProfileError, match="no profile at .*nope.toml.*keyrelay dev up"):
        load_profile(tmp_path / "nope.toml")


def test_default_path_is_keyrelay_profile_in_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("KEYRELAY_PROFILE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert kr.default_profile_path() == tmp_path / ".keyrelay" / "profile.toml"
    with pytest.raises(ProfileError, match=r"\.keyrelay/profile\.toml"):
        load_profile()
    write(tmp_path / ".keyrelay" / "profile.toml", 'endpoint = "cwd:1"\n')
    assert load_profile().endpoint == "cwd:1"


def test_env_names_the_default_profile(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / ".keyrelay" / "profile.toml", 'endpoint = "cwd:1"\n')
    monkeypatch.setenv("KEYRELAY_PROFILE", str(write(tmp_path / "env.toml", 'endpoint = "env:1"\n')))
    assert load_profile().endpoint == "env:1"


def test_bundle_from_files_names_what_is_wrong(credential_dir, pems, tmp_path):
    ca, cert, key = credential_dir / "ca.crt", credential_dir / "admin.crt", credential_dir / "admin.key"
    assert CredentialBundle.from_files(ca, cert, key).client_key == pems[2]
    assert CredentialBundle.from_files(ca).client_cert is None
    with pytest.raises(ProfileError, match=f"CA certificate {tmp_path / 'missing.crt'}"):
        CredentialBundle.from_files(tmp_path / "missing.crt")
    with pytest.raises(ProfileError, match="without its key"):
        CredentialBundle.from_files(ca, cert)
    with pytest.raises(ProfileError, match="holds no PEM certificate"):
        CredentialBundle.from_files(key)
    (tmp_path / "other.key").write_bytes(pems[3])
    with pytest.raises(ProfileError, match="does not belong"):
        CredentialBundle.from_files(ca, cert, tmp_path / "other.key")


def test_bundle_needs_cert_and_key_together(pems):
    with pytest.raises(ProfileError):
        CredentialBundle(pems[0], pems[1], None)


def test_private_keys_never_appear_in_repr(pems):
    ca_pem, cert_pem, key_pem, _ = pems
    bundle = CredentialBundle(ca_pem, cert_pem, key_pem)
    secret = key_pem.decode().splitlines()[1]
    assert secret not in repr(bundle)
    assert "client_key" not in repr(bundle)
    assert secret not in repr(Profile("gw:1", bundle))
    now = datetime.now(timezone.utc)
    issued = kr.IssuedCredential(kr.Credential("ab", "ap", now, now, False, None, "f" * 64), cert_pem, ca_pem, key_pem)
    assert secret not in repr(issued)
    assert issued.bundle == bundle


def test_write_profile_is_private_and_round_trips(credential_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_profile(
        credential_dir / "profile.toml",
        "127.0.0.1:7443",
        credential_dir / "ca.crt",
        "creds/admin.crt",  # relative to the current directory
        credential_dir / "admin.key",
        private_endpoints={"dev-dedicated": "127.0.0.1:7202", "odd id": "h:1"},
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert 'ca = "ca.crt"' in text and 'cert = "admin.crt"' in text  # relative: the folder can move
    profile = load_profile(path)
    assert profile.endpoint == "127.0.0.1:7443"
    assert profile.credentials.client_key is not None
    assert profile.private_endpoints == {"dev-dedicated": "127.0.0.1:7202", "odd id": "h:1"}


def test_write_profile_tightens_an_existing_file_and_keeps_outside_paths_absolute(credential_dir, tmp_path):
    path = write(tmp_path / "p" / "profile.toml", "old")
    path.chmod(0o644)
    write_profile(path, "gw:1", credential_dir / "ca.crt", None, None)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert f'ca = "{credential_dir / "ca.crt"}"' in path.read_text()
    assert load_profile(path).credentials.client_cert is None


def test_clients_take_endpoint_timeout_and_tenant_from_a_profile(tmp_path, monkeypatch):
    path = write(tmp_path / "p.toml", 'endpoint = "127.0.0.1:7101"\ntenant = "acme"\ntimeout = 3\n')
    with kr.KmsClient(profile=path) as kms:
        assert (kms.endpoint, kms._timeout, kms._tenant) == ("127.0.0.1:7101", 3.0, "acme")
    with kr.KmsClient("127.0.0.1:9", profile=load_profile(path), timeout=7, tenant="globex") as kms:
        assert (kms.endpoint, kms._timeout, kms._tenant) == ("127.0.0.1:9", 7, "globex")
    monkeypatch.setenv("KEYRELAY_PROFILE", str(path))
    with kr.AdminClient() as admin:
        assert admin.endpoint == "127.0.0.1:7101" and admin.profile.path == path
    with kr.AdminClient.from_profile() as admin:
        assert admin.endpoint == "127.0.0.1:7101"
    with kr.KmsClient("127.0.0.1:9") as kms:  # an explicit target needs no profile
        assert kms.profile is None and kms._timeout == 10.0


def test_client_without_target_or_profile_explains(tmp_path, monkeypatch):
    monkeypatch.delenv("KEYRELAY_PROFILE", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ProfileError, match="no profile at"):
        kr.KmsClient()


def test_client_with_credentials_opens_a_tls_channel(credential_dir, pems):
    bundle = CredentialBundle.from_files(credential_dir / "ca.crt", credential_dir / "admin.crt", credential_dir / "admin.key")
    with kr.KmsClient("127.0.0.1:7443", credentials=bundle) as kms:
        assert kms._credentials is bundle
    with pytest.raises(ProfileError, match="not usable"):
        kr.KmsClient("127.0.0.1:7443", credentials=CredentialBundle(b"not a certificate"))


def test_relay_section_names_the_relay_and_its_ca(credential_dir, pems):
    path = write_profile(
        credential_dir / "profile.toml", "127.0.0.1:7443", credential_dir / "ca.crt", None, None,
        relay_endpoint="127.0.0.1:7301", relay_ca=credential_dir / "ca.crt",
    )
    assert '[relay]\nendpoint = "127.0.0.1:7301"\nca = "ca.crt"' in path.read_text()
    profile = load_profile(path)
    assert profile.relay_endpoint == "127.0.0.1:7301"
    assert profile.relay_credentials.ca_cert == pems[0] and profile.relay_credentials.client_cert is None
    assert load_profile(write(credential_dir / "plain.toml", 'endpoint = "h:1"\n[relay]\nendpoint = "h:2"\n')).relay_credentials is None


@pytest.mark.parametrize(
    "relay, expected",
    [
        ('token = "krt_x"', r"bad \[relay\] table"),
        ('ca = "ca.crt"', "no relay endpoint"),
        ('endpoint = "h:2"\nca = "missing.crt"', "missing.crt"),
    ],
)
def test_bad_relay_sections_are_explained(credential_dir, relay, expected):
    path = write(credential_dir / "profile.toml", f'endpoint = "h:1"\n[relay]\n{relay}\n')
    with pytest.raises(ProfileError, match=expected):
        load_profile(path)
