"""The keyrelay CA and the certificates it issues (X.509 with `cryptography`).

- `CertificateAuthority` creates a CA on disk (`ca.crt`, `ca.key`; EC P-256), loads one back,
  issues key pairs with certificates (`issue`: servers and clients, with SAN hosts) and signs
  certificate signing requests (`sign_csr`: access-point credentials, the key never leaves the
  client).
- `make_key_and_csr` makes a client's key and CSR; `write_credential` stores an issued credential.
- `serial_hex`, `fingerprint_sha256`, `load_certificate` and `certificate_pem` are the small
  conversions the gateway, the nodes and the SDK share.

Private keys are written only to files of mode 0600 (never readable by others, not even while
being written) and never appear in logs or error messages.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from foundation.config import ConfigError
from foundation.errors import InvalidArgumentError, quote

__all__ = [
    "CertificateAuthority",
    "certificate_pem",
    "fingerprint_sha256",
    "load_certificate",
    "load_private_key",
    "make_key_and_csr",
    "serial_hex",
    "write_credential",
]

#: File names of a CA directory (and of the CA certificate beside every credential).
CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"

# Certificates start a little in the past so a peer whose clock runs behind accepts them at once.
_CLOCK_SKEW = datetime.timedelta(minutes=5)
_CSR_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
_MIN_RSA_BITS = 2048


# -- small conversions -----------------------------------------------------------------------


def serial_hex(cert: x509.Certificate) -> str:
    """The certificate's serial number as lowercase hex without leading zeros."""
    return format(cert.serial_number, "x")


def fingerprint_sha256(cert: x509.Certificate) -> str:
    """Lowercase hex SHA-256 over the certificate's DER encoding."""
    return cert.fingerprint(hashes.SHA256()).hex()


def load_certificate(pem: bytes) -> x509.Certificate:
    """Parse one PEM certificate; raises InvalidArgumentError when it is not one."""
    try:
        return x509.load_pem_x509_certificate(pem)
    except (ValueError, TypeError) as exc:
        raise InvalidArgumentError(f"the certificate is not valid PEM: {exc}") from None


def certificate_pem(cert: x509.Certificate) -> bytes:
    """The certificate in PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def _private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str, organization: str = "") -> x509.Name:
    if not common_name:
        raise InvalidArgumentError("the common name is empty; give the certificate a name")
    try:
        attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        if organization:
            attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
        return x509.Name(attributes)
    except ValueError as exc:
        # e.g. a common name longer than the 64 characters X.509 allows.
        raise InvalidArgumentError(f"invalid certificate subject: {exc}") from None


def _san_entry(host: str) -> x509.GeneralName:
    host = host.strip()
    if not host:
        raise InvalidArgumentError("a host name is empty; give a DNS name or an IP address")
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    try:
        return x509.DNSName(host)
    except ValueError as exc:
        raise InvalidArgumentError(f"host {quote(host)} is neither an IP address nor a DNS name: {exc}") from None


# -- files -----------------------------------------------------------------------------------


def _write_file(path: Path, data: bytes, mode: int, *, overwrite: bool = True) -> None:
    """Write a file atomically with `mode` set before any content is written.

    The content goes to a private temporary file (created 0600) in the same folder, which then
    replaces `path` or, with overwrite=False, is linked to it (FileExistsError if it exists).
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def write_credential(
    directory: str | os.PathLike[str], name: str, cert_pem: bytes, key_pem: bytes, ca_pem: bytes
) -> dict[str, Path]:
    """Write NAME.crt (0644), NAME.key (0600) and ca.crt (0644) into `directory`.

    An existing credential of the same name is replaced atomically. Returns the paths under the
    keys "cert", "key" and "ca".
    """
    if not name or name.startswith(".") or os.sep in name or (os.altsep and os.altsep in name):
        raise InvalidArgumentError(
            f"credential name {quote(name)} cannot be a file name; use letters, digits, '-' or '_'"
        )
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths = {"cert": folder / f"{name}.crt", "key": folder / f"{name}.key", "ca": folder / CA_CERT_FILE}
    _write_file(paths["key"], key_pem, 0o600)
    _write_file(paths["cert"], cert_pem, 0o644)
    _write_file(paths["ca"], ca_pem, 0o644)
    return paths


def load_private_key(
    pem: bytes, where: str, *, certificate: x509.Certificate | None = None, certificate_where: str = ""
):
    """Parse an unencrypted PEM private key; with `certificate`, check the key belongs to it.

    Raises:
        ConfigError: naming `where` (a file, or a config key) but never quoting the key.
    """
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise ConfigError(f"the private key {where} is encrypted; give an unencrypted PEM key") from None
    except (ValueError, UnsupportedAlgorithm):
        # The parser's message could quote the key; say only what kind of file is expected.
        raise ConfigError(f"the private key {where} is not a PEM private key") from None
    if certificate is not None and key.public_key() != certificate.public_key():
        raise ConfigError(f"the private key {where} does not belong to the certificate {certificate_where}")
    return key


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror}") from None


# -- the CA ----------------------------------------------------------------------------------


class CertificateAuthority:
    """A CA certificate with its private key; issues TLS certificates and signs CSRs.

    Make one with `create` (a new CA on disk) or `load` (an existing one).
    """

    def __init__(self, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
        self._certificate = certificate
        self._key = key

    def __repr__(self) -> str:
        return f"CertificateAuthority(subject={quote(self._certificate.subject.rfc4514_string())})"

    @property
    def certificate(self) -> x509.Certificate:
        """The CA certificate."""
        return self._certificate

    @property
    def certificate_pem(self) -> bytes:
        """The CA certificate in PEM (what clients and servers trust)."""
        return certificate_pem(self._certificate)

    @classmethod
    def create(
        cls, directory: str | os.PathLike[str], common_name: str, *, validity_days: int = 3650
    ) -> CertificateAuthority:
        """Create a new CA in `directory`: ca.crt (0644) and ca.key (0600, EC P-256, PEM).

        Raises:
            FileExistsError: `directory`/ca.key exists; a CA is never replaced by accident.
        """
        folder = Path(directory)
        key_path = folder / CA_KEY_FILE
        if key_path.exists():
            raise FileExistsError(
                f"{key_path} exists already; refusing to replace a CA key "
                "(load it, or choose another directory)"
            )
        _check_days(validity_days)
        key = _new_key()
        name = _name(common_name)
        now = datetime.datetime.now(datetime.timezone.utc)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + datetime.timedelta(days=validity_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            _write_file(key_path, _private_key_pem(key), 0o600, overwrite=False)
        except FileExistsError:
            raise FileExistsError(f"{key_path} exists already; refusing to replace a CA key") from None
        _write_file(folder / CA_CERT_FILE, certificate_pem(certificate), 0o644)
        return cls(certificate, key)

    @classmethod
    def load(cls, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> CertificateAuthority:
        """Load a CA from its certificate and (unencrypted PEM) key files.

        Raises:
            ConfigError: a file is missing or unreadable, is not a CA certificate, or the key does
                not belong to the certificate.
        """
        cert_path, key_path = Path(cert_path), Path(key_path)
        cert_pem = _read(cert_path, "CA certificate")
        try:
            certificate = x509.load_pem_x509_certificate(cert_pem)
        except ValueError as exc:
            raise ConfigError(f"the CA certificate {cert_path} is not a PEM certificate: {exc}") from None
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise ConfigError(f"{cert_path} is not a CA certificate (no basicConstraints CA=true)")
        key = load_private_key(
            _read(key_path, "CA key"), str(key_path), certificate=certificate, certificate_where=str(cert_path)
        )
        if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
            raise ConfigError(f"the CA key {key_path} must be an EC or RSA key")
        return cls(certificate, key)

    def issue(
        self,
        common_name: str,
        *,
        hosts: tuple[str, ...] | list[str] = (),
        server: bool = False,
        client: bool = True,
        organization: str = "",
        validity_days: int = 365,
    ) -> tuple[x509.Certificate, bytes]:
        """Issue a certificate for a fresh EC P-256 key.

        `hosts` (DNS names or IP addresses) become the subjectAltName a client checks when it
        dials a server; `server` and `client` choose the extended key usages.

        Returns:
            (certificate, the private key as unencrypted PKCS#8 PEM).
        """
        if not (server or client):
            raise InvalidArgumentError("a certificate must be for a server, a client or both")
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
        usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        key = _new_key()
        sans = [_san_entry(h) for h in hosts]
        certificate = self._sign(
            key.public_key(), _name(common_name, organization), usages, sans, validity_days, None
        )
        return certificate, _private_key_pem(key)

    def sign_csr(
        self,
        csr_pem: bytes,
        *,
        common_name: str,
        organization: str,
        validity_days: int,
        not_before: datetime.datetime | None = None,
    ) -> x509.Certificate:
        """Sign a client CSR as a clientAuth certificate for `common_name` / `organization`.

        The CSR only contributes its public key: its subject and extensions are ignored. The CSR
        must carry a valid signature and an EC (P-256, P-384, P-521) or RSA (2048+ bits) key.

        Raises:
            InvalidArgumentError: the CSR is not PEM, its signature is wrong or its key is refused.
        """
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except (ValueError, TypeError) as exc:
            raise InvalidArgumentError(f"the certificate signing request is not valid PEM: {exc}") from None
        try:
            public_key = csr.public_key()
            signature_ok = csr.is_signature_valid
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise InvalidArgumentError(f"the certificate signing request cannot be checked: {exc}") from None
        if not signature_ok:
            raise InvalidArgumentError(
                "the certificate signing request's signature is not valid; make a new CSR signed with its key"
            )
        _check_csr_key(public_key)
        return self._sign(
            public_key,
            _name(common_name, organization),
            [ExtendedKeyUsageOID.CLIENT_AUTH],
            [],
            validity_days,
            not_before,
        )

    def _sign(
        self,
        public_key,
        subject: x509.Name,
        usages: list[x509.ObjectIdentifier],
        sans: list[x509.GeneralName],
        validity_days: int,
        not_before: datetime.datetime | None,
    ) -> x509.Certificate:
        _check_days(validity_days)
        start = not_before or datetime.datetime.now(datetime.timezone.utc) - _CLOCK_SKEW
        if start.tzinfo is None:
            start = start.replace(tzinfo=datetime.timezone.utc)
        # A certificate never outlives the CA that vouches for it.
        end = min(start + datetime.timedelta(days=validity_days), self._certificate.not_valid_after_utc)
        is_ec = isinstance(public_key, ec.EllipticCurvePublicKey)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=not is_ec,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(self._key, hashes.SHA256())


def _check_days(validity_days: int) -> None:
    if isinstance(validity_days, bool) or not isinstance(validity_days, int) or validity_days < 1:
        raise InvalidArgumentError(f"validity_days must be a whole number of days, 1 or more (got {quote(validity_days)})")


def _check_csr_key(public_key) -> None:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if isinstance(public_key.curve, _CSR_CURVES):
            return
        kind = f"EC {public_key.curve.name}"
    elif isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size >= _MIN_RSA_BITS:
            return
        kind = f"RSA {public_key.key_size}"
    else:
        kind = type(public_key).__name__.removesuffix("PublicKey").lstrip("_")
    raise InvalidArgumentError(
        f"the certificate signing request's key type {kind} is not supported; use EC P-256 or RSA 2048+"
    )


def make_key_and_csr(common_name: str = "keyrelay-client") -> tuple[bytes, bytes]:
    """A fresh EC P-256 key and a CSR for it: (private key PEM, CSR PEM)."""
    key = _new_key()
    csr = x509.CertificateSigningRequestBuilder().subject_name(_name(common_name)).sign(key, hashes.SHA256())
    return _private_key_pem(key), csr.public_bytes(serialization.Encoding.PEM)
