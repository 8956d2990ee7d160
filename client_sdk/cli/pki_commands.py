"""`keyrelay pki create-ca` and `keyrelay pki issue`: a CA and TLS credentials for development
and small deployments."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from foundation.config import ConfigError
from foundation.errors import KeyrelayError


def _days(value: str) -> int:
    try:
        days = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of days") from None
    if days < 1:
        raise argparse.ArgumentTypeError("give 1 day or more")
    return days


def register(commands) -> None:
    """Add the `pki` command group to the `keyrelay` parser."""
    pki = commands.add_parser("pki", help="create a CA and issue TLS certificates")
    sub = pki.add_subparsers(dest="pki_command", metavar="SUBCOMMAND", required=True)

    create_ca = sub.add_parser(
        "create-ca",
        help="create a new CA (ca.crt and ca.key) in a directory",
        description=(
            "Create a CA: an EC P-256 key in DIR/ca.key (mode 0600) and a self-signed certificate in "
            "DIR/ca.crt. Refuses to replace an existing ca.key.\n\n"
            "Example: keyrelay pki create-ca --dir .keyrelay/ca --name 'keyrelay dev CA'"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    create_ca.add_argument("--dir", required=True, metavar="DIR", help="the directory to create the CA in")
    create_ca.add_argument("--name", required=True, help="the CA certificate's common name")
    create_ca.add_argument("--days", type=_days, default=3650, help="validity in days (default 3650)")
    create_ca.set_defaults(func=_create_ca)

    issue = sub.add_parser(
        "issue",
        help="issue a key and certificate signed by a CA",
        description=(
            "Issue a fresh EC P-256 key and a certificate for it, signed by the CA in --ca-dir, and write "
            "OUT/CN.crt, OUT/CN.key (mode 0600) and OUT/ca.crt. Without --server or --client the "
            "certificate is for a client. A server certificate names every host clients dial (--host).\n\n"
            "Example: keyrelay pki issue --ca-dir .keyrelay/ca --name keyrelay-gateway --out .keyrelay/tls "
            "--server --client --host localhost --host 127.0.0.1"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    issue.add_argument("--ca-dir", required=True, metavar="DIR", help="the CA directory (ca.crt and ca.key)")
    issue.add_argument("--name", required=True, metavar="CN", help="the certificate's common name (and file name)")
    issue.add_argument("--out", required=True, metavar="DIR", help="the directory to write the credential to")
    issue.add_argument(
        "--host", action="append", default=[], metavar="H",
        help="a DNS name or IP address the server answers on (repeat)",
    )
    issue.add_argument("--server", action="store_true", help="allow the certificate for TLS servers")
    issue.add_argument("--client", action="store_true", help="allow the certificate for TLS clients")
    issue.add_argument("--organization", default="", metavar="O", help="the subject organization (O)")
    issue.add_argument("--days", type=_days, default=365, help="validity in days (default 365)")
    issue.set_defaults(func=_issue)


def _fail(command: str, message: str) -> int:
    print(f"keyrelay pki {command}: {message}", file=sys.stderr)
    return 1


def _create_ca(args: argparse.Namespace) -> int:
    from foundation.pki import CA_CERT_FILE, CA_KEY_FILE, CertificateAuthority, fingerprint_sha256

    try:
        ca = CertificateAuthority.create(args.dir, args.name, validity_days=args.days)
    except (FileExistsError, KeyrelayError) as exc:
        return _fail("create-ca", str(exc))
    except OSError as exc:
        return _fail("create-ca", f"cannot write to {exc.filename or args.dir}: {exc.strerror}")
    folder = Path(args.dir)
    print(f"CA certificate: {folder / CA_CERT_FILE}")
    print(f"CA key:         {folder / CA_KEY_FILE} (keep it secret)")
    print(f"SHA-256:        {fingerprint_sha256(ca.certificate)}")
    return 0


def _issue(args: argparse.Namespace) -> int:
    from foundation.pki import (
        CA_CERT_FILE,
        CA_KEY_FILE,
        CertificateAuthority,
        certificate_pem,
        fingerprint_sha256,
        serial_hex,
        write_credential,
    )

    ca_dir = Path(args.ca_dir)
    client = args.client or not args.server
    try:
        ca = CertificateAuthority.load(ca_dir / CA_CERT_FILE, ca_dir / CA_KEY_FILE)
        cert, key_pem = ca.issue(
            args.name,
            hosts=tuple(args.host),
            server=args.server,
            client=client,
            organization=args.organization,
            validity_days=args.days,
        )
        paths = write_credential(args.out, args.name, certificate_pem(cert), key_pem, ca.certificate_pem)
    except (ConfigError, KeyrelayError) as exc:
        return _fail("issue", str(exc))
    except OSError as exc:
        return _fail("issue", f"cannot write to {exc.filename or args.out}: {exc.strerror}")
    print(f"certificate: {paths['cert']}")
    print(f"key:         {paths['key']} (keep it secret)")
    print(f"CA:          {paths['ca']}")
    print(f"serial:      {serial_hex(cert)}")
    print(f"SHA-256:     {fingerprint_sha256(cert)}")
    return 0
