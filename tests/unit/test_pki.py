"""Unit tests of foundation/pki.py and the `keyrelay pki` commands: the CA on disk, issued
certificates (SANs, key usages), CSR checks, file modes and formats."""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import re
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from client_sdk.cli import pki_commands
from foundation.config import ConfigError
from foundation.errors import InvalidArgumentError
from foundation.pki import (
    CertificateAuthority,
    certificate_pem,
    fingerprint_sha256,
    load_certificate,
    make_key_and_csr,
    serial_hex,
    write_credential,
)


@pytest.fixture
def ca(tmp_path):
    return CertificateAuthority.create(tmp_path / "ca", "test CA")


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _eku(cert: x509.Certificate) -> set:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _verify_signed_by(cert: x509.Certificate, ca: CertificateAuthority) -> None:
    cert.verify_directly_issued_by(ca.certificate)


def _csr(key, common_name: str = "ignored", algorithm=hashes.SHA256()) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, algorithm)
    )
    return csr.public_bytes(serialization.Encoding.PEM)


# -- the CA ----------------------------------------------------------------------------------


def test_create_writes_ca_files_with_modes(tmp_path, ca):
    folder = tmp_path / "ca"
    assert _mode(folder / "ca.key") == 0o600
    assert _mode(folder / "ca.crt") == 0o644
    cert = ca.certificate
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "test CA"
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    assert (folder / "ca.crt").read_bytes() == ca.certificate_pem
    assert b"PRIVATE KEY" in (folder / "ca.key").read_bytes()
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_create_refuses_to_overwrite_key(tmp_path, ca):
    before = (tmp_path / "ca" / "ca.key").read_bytes()
    with pytest.raises(FileExistsError, match="refusing to replace"):
        CertificateAuthority.create(tmp_path / "ca", "another CA")
    assert (tmp_path / "ca" / "ca.key").read_bytes() == before


def test_load_round_trip(tmp_path, ca):
    loaded = CertificateAuthority.load(tmp_path / "ca" / "ca.crt", tmp_path / "ca" / "ca.key")
    assert loaded.certificate == ca.certificate
    cert, _key = loaded.issue("after-load")
    _verify_signed_by(cert, ca)


def test_load_missing_file_is_config_error(tmp_path, ca):
    with pytest.raises(ConfigError, match="cannot read the CA key .*nope.key"):
        CertificateAuthority.load(tmp_path / "ca" / "ca.crt", tmp_path / "ca" / "nope.key")
    with pytest.raises(ConfigError, match="cannot read the CA certificate"):
        CertificateAuthority.load(tmp_path / "missing.crt", tmp_path / "ca" / "ca.key")


def test_load_refuses_a_leaf_certificate(tmp_path, ca):
    cert, key_pem = ca.issue("leaf")
    paths = write_credential(tmp_path / "leaf", "leaf", certificate_pem(cert), key_pem, ca.certificate_pem)
    with pytest.raises(ConfigError, match="not a CA certificate"):
        CertificateAuthority.load(paths["cert"], paths["key"])


def test_load_refuses_garbage_key_without_quoting_it(tmp_path, ca):
    bad = tmp_path / "bad.key"
    bad.write_bytes(b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0LXN0dWZm\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError) as info:
        CertificateAuthority.load(tmp_path / "ca" / "ca.crt", bad)
    assert "not a PEM private key" in str(info.value)
    assert "c2VjcmV0" not in str(info.value)


def test_load_refuses_a_key_of_another_ca(tmp_path, ca):
    CertificateAuthority.create(tmp_path / "other", "other CA")
    with pytest.raises(ConfigError, match="does not belong"):
        CertificateAuthority.load(tmp_path / "ca" / "ca.crt", tmp_path / "other" / "ca.key")


# -- issue -----------------------------------------------------------------------------------


def test_issue_server_and_client_with_sans(ca):
    cert, key_pem = ca.issue(
        "keyrelay-gateway", hosts=("localhost", "127.0.0.1", "::1"), server=True, client=True, organization="ops"
    )
    _verify_signed_by(cert, ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert _eku(cert) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "ops"
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert key.public_key() == cert.public_key()
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted


def test_issue_defaults_to_client_only_without_sans(ca):
    cert, _key = ca.issue("alice")
    assert _eku(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME) == []
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert 364 <= days <= 366


def test_issue_server_only(ca):
    cert, _key = ca.issue("node", hosts=("node.internal",), server=True, client=False)
    assert _eku(cert) == {ExtendedKeyUsageOID.SERVER_AUTH}


def test_issue_serials_are_random(ca):
    assert ca.issue("a")[0].serial_number != ca.issue("a")[0].serial_number


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"server": False, "client": False}, "server, a client or both"),
        ({"hosts": ("",)}, "host name is empty"),
        ({"validity_days": 0}, "1 or more"),
    ],
)
def test_issue_refuses_bad_arguments(ca, kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        ca.issue("x", **kwargs)


def test_issue_refuses_overlong_common_name(ca):
    with pytest.raises(InvalidArgumentError, match="subject"):
        ca.issue("x" * 65)


# -- sign_csr --------------------------------------------------------------------------------


def test_sign_csr_overrides_subject(ca):
    key_pem, csr_pem = make_key_and_csr("evil-admin")
    cert = ca.sign_csr(csr_pem, common_name="ap-123", organization="tenant-a", validity_days=30)
    _verify_signed_by(cert, ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "ap-123"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "tenant-a"
    assert _eku(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert key.public_key() == cert.public_key()
    assert 29 <= (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 31


def test_sign_csr_not_before_makes_an_expired_cert(ca):
    _key, csr_pem = make_key_and_csr()
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=10)
    cert = ca.sign_csr(csr_pem, common_name="old", organization="t", validity_days=1, not_before=start)
    assert cert.not_valid_after_utc < datetime.datetime.now(datetime.timezone.utc)


@pytest.mark.parametrize(
    "key",
    [ec.generate_private_key(ec.SECP384R1()), rsa.generate_private_key(public_exponent=65537, key_size=2048)],
    ids=["ec-p384", "rsa-2048"],
)
def test_sign_csr_accepts_other_supported_keys(ca, key):
    cert = ca.sign_csr(_csr(key), common_name="c", organization="o", validity_days=1)
    assert cert.public_key() == key.public_key()


def test_sign_csr_refuses_bad_pem(ca):
    with pytest.raises(InvalidArgumentError, match="not valid PEM"):
        ca.sign_csr(b"hello", common_name="c", organization="o", validity_days=1)


def test_sign_csr_refuses_bad_signature(ca):
    _key, csr_pem = make_key_and_csr()
    der = bytearray(x509.load_pem_x509_csr(csr_pem).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte of the signature
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(InvalidArgumentError, match="signature is not valid"):
        ca.sign_csr(tampered, common_name="c", organization="o", validity_days=1)


def test_sign_csr_refuses_ed25519(ca):
    csr_pem = _csr(ed25519.Ed25519PrivateKey.generate(), algorithm=None)
    with pytest.raises(InvalidArgumentError, match="key type Ed25519 is not supported; use EC P-256 or RSA 2048"):
        ca.sign_csr(csr_pem, common_name="c", organization="o", validity_days=1)


def test_sign_csr_refuses_rsa_1024(ca):
    csr_pem = _csr(rsa.generate_private_key(public_exponent=65537, key_size=1024))
    with pytest.raises(InvalidArgumentError, match="RSA 1024 is not supported"):
        ca.sign_csr(csr_pem, common_name="c", organization="o", validity_days=1)


def test_sign_csr_refuses_small_curve(ca):
    csr_pem = _csr(ec.generate_private_key(ec.SECP256K1()))
    with pytest.raises(InvalidArgumentError, match="EC secp256k1 is not supported"):
        ca.sign_csr(csr_pem, common_name="c", organization="o", validity_days=1)


# -- formats and files -----------------------------------------------------------------------


def test_serial_and_fingerprint_formats(ca):
    cert, _key = ca.issue("f")
    assert serial_hex(cert) == format(cert.serial_number, "x")
    assert re.fullmatch(r"[0-9a-f]+", serial_hex(cert)) and not serial_hex(cert).startswith("0")
    fingerprint = fingerprint_sha256(cert)
    assert re.fullmatch(r"[0-9a-f]{64}", fingerprint)
    assert fingerprint == cert.fingerprint(hashes.SHA256()).hex()


def test_certificate_pem_round_trip(ca):
    cert, _key = ca.issue("pem")
    assert load_certificate(certificate_pem(cert)) == cert
    with pytest.raises(InvalidArgumentError, match="not valid PEM"):
        load_certificate(b"not a certificate")


def test_make_key_and_csr():
    key_pem, csr_pem = make_key_and_csr("bob")
    csr = x509.load_pem_x509_csr(csr_pem)
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "bob"
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert key.public_key() == csr.public_key()


def test_write_credential_modes_and_replace(tmp_path, ca):
    cert, key_pem = ca.issue("svc")
    out = tmp_path / "out"
    paths = write_credential(out, "svc", certificate_pem(cert), key_pem, ca.certificate_pem)
    assert paths == {"cert": out / "svc.crt", "key": out / "svc.key", "ca": out / "ca.crt"}
    assert _mode(paths["key"]) == 0o600
    assert _mode(paths["cert"]) == 0o644
    assert paths["key"].read_bytes() == key_pem
    assert paths["ca"].read_bytes() == ca.certificate_pem
    cert2, key2 = ca.issue("svc")
    write_credential(out, "svc", certificate_pem(cert2), key2, ca.certificate_pem)
    assert paths["key"].read_bytes() == key2 and _mode(paths["key"]) == 0o600
    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "svc.crt", "svc.key"]


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden"])
def test_write_credential_refuses_path_like_names(tmp_path, ca, name):
    with pytest.raises(InvalidArgumentError, match="cannot be a file name"):
        write_credential(tmp_path, name, b"c", b"k", b"ca")


# -- the `keyrelay pki` commands -------------------------------------------------------------


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="keyrelay")
    pki_commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_create_ca_and_issue(tmp_path, capsys):
    ca_dir, out = tmp_path / "ca", tmp_path / "tls"
    assert _run(["pki", "create-ca", "--dir", str(ca_dir), "--name", "dev CA", "--days", "30"]) == 0
    assert "ca.crt" in capsys.readouterr().out
    argv = ["pki", "issue", "--ca-dir", str(ca_dir), "--name", "gw", "--out", str(out), "--server",
            "--host", "localhost", "--host", "127.0.0.1", "--organization", "ops"]
    assert _run(argv) == 0
    printed = capsys.readouterr()
    cert = load_certificate((out / "gw.crt").read_bytes())
    assert serial_hex(cert) in printed.out and fingerprint_sha256(cert) in printed.out
    assert "PRIVATE KEY" not in printed.out + printed.err
    assert _eku(cert) == {ExtendedKeyUsageOID.SERVER_AUTH}
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert _mode(out / "gw.key") == 0o600
    assert (out / "ca.crt").read_bytes() == (ca_dir / "ca.crt").read_bytes()


def test_cli_issue_defaults_to_client(tmp_path, capsys):
    _run(["pki", "create-ca", "--dir", str(tmp_path / "ca"), "--name", "dev CA"])
    assert _run(["pki", "issue", "--ca-dir", str(tmp_path / "ca"), "--name", "alice", "--out", str(tmp_path)]) == 0
    cert = load_certificate((tmp_path / "alice.crt").read_bytes())
    assert _eku(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}


def test_cli_create_ca_twice_fails_with_one_line(tmp_path, capsys):
    argv = ["pki", "create-ca", "--dir", str(tmp_path), "--name", "dev CA"]
    assert _run(argv) == 0
    capsys.readouterr()
    assert _run(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("keyrelay pki create-ca: ") and "exists already" in err
    assert err.count("\n") == 1


def test_cli_issue_without_ca_fails_with_one_line(tmp_path, capsys):
    assert _run(["pki", "issue", "--ca-dir", str(tmp_path / "none"), "--name", "x", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("keyrelay pki issue: cannot read the CA certificate") and err.count("\n") == 1


def test_cli_usage_errors_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        _run(["pki", "create-ca", "--dir", str(tmp_path), "--name", "x", "--days", "0"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        _run(["pki", "issue", "--name", "x"])
    assert info.value.code == 2


@pytest.mark.parametrize("command", ["create-ca", "issue"])
def test_cli_help_has_an_example(command, capsys):
    with pytest.raises(SystemExit) as info:
        _run(["pki", command, "--help"])
    assert info.value.code == 0
    assert f"Example: keyrelay pki {command}" in capsys.readouterr().out
