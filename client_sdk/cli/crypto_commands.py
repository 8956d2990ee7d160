"""`keyrelay encrypt`, `decrypt` and `datakey`: cryptography under a master key, inside the KMS.

    echo -n 'card 4111...' | keyrelay encrypt --key alias/orders --context order=42 > card.bin
    keyrelay decrypt --context order=42 < card.bin
    keyrelay datakey --key alias/orders --no-plaintext --output json

How bytes travel:

- `encrypt` reads the plaintext (at most 4096 bytes; larger data: `keyrelay envelope encrypt`)
  from stdin or `--in FILE` and writes the ciphertext blob to stdout or `--out FILE`: raw bytes,
  except base64 text (one line) when the blob would land on a terminal or with `--base64`.
- `decrypt` reads a blob either way: a raw blob starts with its format byte (a control
  character), which no base64 text does, so it tells them apart without a flag. It writes the
  plaintext, raw, to stdout or `--out FILE`.
- `--output json` writes one JSON document instead: {key_id, key_version, ciphertext_blob} and
  {key_id, key_version, plaintext}, bytes in base64. `datakey` always prints text or JSON: the
  wrapped data key and, unless `--no-plaintext`, the plaintext one, both in base64.

Files named by `--out` are created readable by their owner only.
"""

from __future__ import annotations

import argparse
import binascii
from base64 import b64decode

from client_sdk.cli import _output as output
from client_sdk.kms_client import KmsClient

#: The most a command reads: far above what Encrypt takes (4096 bytes) and the size of a blob of
#: it, base64 included; the KMS enforces the real limit, this only keeps a wrong file out of memory.
MAX_INPUT_BYTES = 64 * 1024
DATA_KEY_SIZES = (16, 32, 64)


def decode_blob(data: bytes) -> bytes:
    """A ciphertext blob given raw or as base64 text (white space allowed)."""
    if not data.strip():
        raise output.CliError("no ciphertext blob on input")
    if data[0] < 0x20 and data[:1] not in b"\t\n\r":
        return data  # raw: the format byte
    try:
        return b64decode(b"".join(data.split()), validate=True)
    except binascii.Error:
        raise output.CliError("the input is neither a ciphertext blob nor base64 text of one") from None


def _write(args: argparse.Namespace, document: dict, data: bytes, *, as_text: bool) -> None:
    """Write the command's result to --out or stdout: the JSON document with --output json, else
    `data`, as a base64 line if `as_text`."""
    if args.output == "json":
        output.write_output(output.format_json(document) + "\n", args.out)
    else:
        output.write_output(output.b64(data) + "\n" if as_text else data, args.out)


def _encrypt(kms: KmsClient, args: argparse.Namespace) -> None:
    plaintext = output.read_input(args.input, limit=MAX_INPUT_BYTES, what="plaintext")
    result = kms.encrypt(args.key, plaintext, context=args.context)
    as_text = args.base64 or output.stdout_is_terminal(args.out)
    _write(args, {"key_id": result.key_id, "key_version": result.key_version,
                  "ciphertext_blob": result.ciphertext_blob}, result.ciphertext_blob, as_text=as_text)


def _decrypt(kms: KmsClient, args: argparse.Namespace) -> None:
    blob = decode_blob(output.read_input(args.input, limit=MAX_INPUT_BYTES, what="ciphertext blob"))
    result = kms.decrypt(blob, context=args.context, key_id=args.key)
    _write(args, {"key_id": result.key_id, "key_version": result.key_version, "plaintext": result.plaintext},
           result.plaintext, as_text=False)


def _datakey(kms: KmsClient, args: argparse.Namespace) -> None:
    if args.no_plaintext:
        key = kms.generate_data_key_without_plaintext(args.key, number_of_bytes=args.bytes, context=args.context)
    else:
        key = kms.generate_data_key(args.key, number_of_bytes=args.bytes, context=args.context)
        if output.stdout_is_terminal():
            output.warn("printing a plaintext data key to the terminal; use --no-plaintext unless you need it")
    document = {
        "key_id": key.key_id,
        "key_version": key.key_version,
        "ciphertext_blob": key.ciphertext_blob,
        "plaintext": None if args.no_plaintext else key.plaintext,
    }
    if args.output == "json":
        print(output.format_json(document))
    else:
        items = [(name.replace("_", " "), output.text_value(value)) for name, value in document.items()]
        print(output.format_fields(items[:3] if args.no_plaintext else items))


def register(commands) -> None:
    """Add the `encrypt`, `decrypt` and `datakey` commands to the `keyrelay` parser."""
    common = output.common_options()

    def command(name: str, help: str, examples: list[str], action, key_help: str, **key) -> argparse.ArgumentParser:
        parser = output.add_command(commands, name, help, examples, parents=[common])
        parser.set_defaults(func=output.client_command(KmsClient, action))
        parser.add_argument("--key", metavar="KEY", help=key_help, **key)
        output.add_context_option(parser)
        return parser

    def files(parser: argparse.ArgumentParser, reads: str, writes: str) -> None:
        parser.add_argument("--in", dest="input", metavar="FILE", help=f"read the {reads} from FILE (default: stdin)")
        parser.add_argument("--out", metavar="FILE", help=f"write the {writes} to FILE (default: stdout)")

    p = command(
        "encrypt", "encrypt up to 4096 bytes under a master key (larger data: keyrelay envelope encrypt)",
        ["echo -n 'card 4111 1111' | keyrelay encrypt --key alias/orders --context order=42 > card.bin",
         "keyrelay encrypt --key alias/orders --in secret.txt --base64"],
        _encrypt, "key id or alias/NAME to encrypt under", required=True,
    )
    files(p, "plaintext", "ciphertext blob")
    p.add_argument("--base64", action="store_true",
                   help="write the blob as a base64 line (the default when it would land on a terminal)")

    p = command(
        "decrypt", "decrypt a ciphertext blob (raw or base64) from encrypt or datakey",
        ["keyrelay decrypt --context order=42 < card.bin",
         "keyrelay decrypt --in card.b64 --key alias/orders --output json"],
        _decrypt, "refuse the blob unless it was made under this key (id or alias/NAME)", default="",
    )
    files(p, "ciphertext blob", "plaintext")

    p = command(
        "datakey", "generate a data key for envelope encryption: wrapped under a master key, and in plaintext",
        ["keyrelay datakey --key alias/orders --context file=report.pdf --output json",
         "keyrelay datakey --key alias/orders --no-plaintext"],
        _datakey, "key id or alias/NAME to wrap the data key under", required=True,
    )
    p.add_argument("--bytes", type=int, choices=DATA_KEY_SIZES, default=32, help="data key length (default 32)")
    p.add_argument("--no-plaintext", action="store_true", help="return only the wrapped data key")
