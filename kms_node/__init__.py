"""A keyrelay KMS node: key lifecycle and cryptography on a PKCS#11 HSM pool.

Run it with ``keyrelay node --config node.toml`` (``shared`` or ``dedicated`` mode); provision its
pool once with ``keyrelay hsm init --config node.toml``.
"""
