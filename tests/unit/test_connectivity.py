"""What `client_sdk._connectivity` probes for a gRPC target: the host and port (or Unix socket) it
dials, or nothing for a target it cannot read (then no failure is ever taken for a TLS refusal)."""

from __future__ import annotations

import pytest

from client_sdk._connectivity import _address


@pytest.mark.parametrize(
    "target, address",
    [
        ("127.0.0.1:7443", ("tcp", "127.0.0.1", 7443)),
        ("kms.example:443", ("tcp", "kms.example", 443)),
        ("kms.example", ("tcp", "kms.example", 443)),
        ("[::1]:7443", ("tcp", "::1", 7443)),
        ("[::1]", ("tcp", "::1", 443)),
        ("::1", ("tcp", "::1", 443)),
        ("dns:///kms.example:7443", ("tcp", "kms.example", 7443)),
        ("dns://8.8.8.8/kms.example:7443", ("tcp", "kms.example", 7443)),
        ("dns:kms.example:7443", ("tcp", "kms.example", 7443)),
        ("ipv4:10.0.0.1:7443,10.0.0.2:7443", ("tcp", "10.0.0.1", 7443)),
        ("ipv6:[::1]:7443", ("tcp", "::1", 7443)),
        ("unix:/run/keyrelay.sock", ("unix", "/run/keyrelay.sock", 0)),
        ("unix:///run/keyrelay.sock", ("unix", "/run/keyrelay.sock", 0)),
        ("unix-abstract:keyrelay", ("unix", "\0keyrelay", 0)),
    ],
)
def test_a_target_names_what_to_probe(target, address):
    assert _address(target) == address


@pytest.mark.parametrize("target", ["", "xds:///kms", "kms.example:https", ":7443"])
def test_a_target_it_cannot_read_is_not_probed(target):
    assert _address(target) is None
