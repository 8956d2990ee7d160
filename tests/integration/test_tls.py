"""Mutual TLS end to end with foundation/tls.py and foundation/pki.py: a real grpc.aio server on
a loopback port serving health and a tiny handler that reports who called."""

from __future__ import annotations

import ipaddress
from types import SimpleNamespace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from foundation.config import ConfigError
from foundation.grpc_server import Health, new_server
from foundation.pki import CertificateAuthority, certificate_pem, write_credential
from foundation.tls import (
    channel_credentials,
    channel_credentials_from_pem,
    peer_certificate,
    peer_common_name,
    peer_ip,
    peer_organization,
    server_credentials,
)

# Generous: a slow 2-core machine may take a while for the first handshake.
TIMEOUT = 30
WHOAMI = "/keyrelay.test.Whoami/Get"


async def _whoami(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    cert = peer_certificate(context)
    return f"{peer_common_name(cert)}|{peer_organization(cert)}|{peer_ip(context)}".encode()


@pytest.fixture
def pki(tmp_path):
    ca = CertificateAuthority.create(tmp_path / "ca", "test CA")
    cert, key = ca.issue("keyrelay-node", hosts=("localhost", "127.0.0.1"), server=True, client=False)
    server = write_credential(tmp_path / "server", "server", certificate_pem(cert), key, ca.certificate_pem)
    cert, key = ca.issue("gateway-1", organization="tenant-a")
    client = write_credential(tmp_path / "client", "client", certificate_pem(cert), key, ca.certificate_pem)
    return SimpleNamespace(ca=ca, server=server, client=client, tmp_path=tmp_path)


@pytest.fixture
async def target(pki):
    server = new_server()
    health = Health(server, ["keyrelay.test.Whoami"])
    handlers = {"Get": grpc.unary_unary_rpc_method_handler(_whoami)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("keyrelay.test.Whoami", handlers),))
    credentials = server_credentials(pki.server["cert"], pki.server["key"], pki.server["ca"], require_client_cert=True)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    await health.set_serving(True)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=None)


async def _check_health(target: str, credentials: grpc.ChannelCredentials) -> int:
    async with grpc.aio.secure_channel(target, credentials) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
    return response.status


async def test_client_with_ca_issued_cert_is_served_and_identified(pki, target):
    credentials = channel_credentials(pki.client["ca"], pki.client["cert"], pki.client["key"])
    assert await _check_health(target, credentials) == health_pb2.HealthCheckResponse.SERVING
    async with grpc.aio.secure_channel(target, credentials) as channel:
        answer = await channel.unary_unary(WHOAMI)(b"", timeout=TIMEOUT)
    cn, organization, ip = answer.decode().split("|")
    assert (cn, organization) == ("gateway-1", "tenant-a")
    assert ipaddress.ip_address(ip) == ipaddress.ip_address("127.0.0.1")


async def test_client_dialling_localhost_matches_the_dns_san(pki, target):
    port = target.rpartition(":")[2]
    credentials = channel_credentials_from_pem(
        pki.client["ca"].read_bytes(), pki.client["cert"].read_bytes(), pki.client["key"].read_bytes()
    )
    # "localhost" may resolve to ::1 first; the server listens on 127.0.0.1 only, so name the
    # address and let TLS check the name.
    options = (("grpc.ssl_target_name_override", "localhost"),)
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options=options) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_client_without_certificate_is_refused(pki, target):
    credentials = channel_credentials(pki.client["ca"])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _check_health(target, credentials)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_client_certificate_from_another_ca_is_refused(pki, target):
    other = CertificateAuthority.create(pki.tmp_path / "other-ca", "other CA")
    cert, key = other.issue("gateway-1", organization="tenant-a")
    credentials = channel_credentials_from_pem(pki.ca.certificate_pem, certificate_pem(cert), key)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _check_health(target, credentials)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_server_not_named_for_the_dialled_host_is_refused(pki, target):
    port = target.rpartition(":")[2]
    credentials = channel_credentials(pki.client["ca"], pki.client["cert"], pki.client["key"])
    options = (("grpc.ssl_target_name_override", "elsewhere.example"),)
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options=options) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


# -- credential files ------------------------------------------------------------------------


def test_server_credentials_name_the_missing_file_and_key(pki):
    with pytest.raises(ConfigError, match=r"TLS private key .*nope\.key \(config key tls\.key\)"):
        server_credentials(pki.server["cert"], pki.tmp_path / "nope.key", pki.server["ca"])
    with pytest.raises(ConfigError, match=r"private_endpoint\.client_ca"):
        server_credentials(pki.server["cert"], pki.server["key"], section="private_endpoint")


def test_server_credentials_refuse_a_key_of_another_certificate(pki):
    with pytest.raises(ConfigError, match="does not belong"):
        server_credentials(pki.server["cert"], pki.client["key"], pki.server["ca"])


def test_server_credentials_without_client_ca_when_not_required(pki):
    assert server_credentials(pki.server["cert"], pki.server["key"], require_client_cert=False) is not None


def test_channel_credentials_need_cert_and_key_together(pki):
    with pytest.raises(ConfigError, match="give both or neither"):
        channel_credentials(pki.client["ca"], pki.client["cert"])


# -- peer helpers on fake contexts ------------------------------------------------------------


class _FakeContext:
    def __init__(self, peer: str = "", auth: dict | None = None) -> None:
        self._peer, self._auth = peer, auth or {}

    def peer(self) -> str:
        return self._peer

    def auth_context(self) -> dict:
        return self._auth


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("ipv4:127.0.0.1:5555", "127.0.0.1"),
        ("ipv6:[::1]:5555", "::1"),
        ("ipv6:%5B::1%5D:5555", "::1"),
        ("ipv6:[::ffff:10.1.2.3]:5555", "10.1.2.3"),
        ("ipv6:[2001:db8::7]:443", "2001:db8::7"),
        ("unix:/tmp/sock", None),
        ("", None),
        ("ipv4:garbage:1", None),
    ],
)
def test_peer_ip_forms(peer, expected):
    result = peer_ip(_FakeContext(peer))
    assert result == (ipaddress.ip_address(expected) if expected else None)


def test_peer_certificate_absent_on_plaintext():
    context = _FakeContext(auth={"transport_security_type": [b"insecure"]})
    assert peer_certificate(context) is None
    assert peer_common_name(None) == "" and peer_organization(None) == ""
