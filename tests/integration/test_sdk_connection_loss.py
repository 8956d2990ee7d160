"""The SDK tells a connection lost mid-call from a TLS refusal, on the real KMS and relay over real
TLS: a server dying under an Encrypt or Decrypt (a TCP proxy in front of the gateway closes the
call's connection, as a crashed process's kernel does, and refuses connections for a while) is
retried until the server is back, and never blamed on the certificate; a certificate the server
refuses (another CA, expired) or a server the client does not trust raises `TlsRefusedError` at
once, saying what to check. `KmsClient` and `AsyncKmsClient` behave the same."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from datetime import datetime, timedelta, timezone

import grpc
import pytest

from client_sdk import AsyncKmsClient, KmsClient, RelayClient, TlsRefusedError, UnavailableError
from client_sdk.credentials import CredentialBundle
from foundation.pki import CertificateAuthority, certificate_pem, make_key_and_csr, write_credential
from inprocess_cluster import InProcessCluster
from loop_thread import LoopThread
from relay.config import RateLimitConfig, RelayConfig, ServerTlsConfig, StoreConfig
from relay.server import RelayServer
from tcp_proxy import TcpProxy

# Generous deadlines for a slow machine: a retried call must fit several of gRPC's reconnect
# backoffs (1 s, then 1.6 s, ...); a refused one must come back long before its deadline.
RETRY_TIMEOUT = 60
REFUSED_TIMEOUT = 60
PLAINTEXT = b"p" * 2000  # one call's bytes outweigh any HTTP/2 ping or acknowledgement


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, softhsm):
    served = InProcessCluster(tmp_path_factory.mktemp("connection-loss")).start()
    served.acme = served.owned_by("acme").bundle
    with KmsClient(served.zone_targets["public"], credentials=served.acme, timeout=30) as kms:
        served.key_id = kms.create_key(description="connection loss").key_id
    yield served
    served.stop()


@pytest.fixture
def proxy(cluster):
    """A TCP proxy in front of the gateway's public listener."""
    proxied = TcpProxy(cluster.zone_targets["public"])
    yield proxied
    proxied.close()


def _expired_credential(cluster) -> CredentialBundle:
    """A client certificate of the KMS CA that expired two days ago."""
    ca = CertificateAuthority.load(cluster.root / "kms-ca" / "ca.crt", cluster.root / "kms-ca" / "ca.key")
    key_pem, csr_pem = make_key_and_csr()
    expired = ca.sign_csr(
        csr_pem, common_name="ap:expired", organization="acme", validity_days=1,
        not_before=datetime.now(timezone.utc) - timedelta(days=3),
    )
    return CredentialBundle(ca.certificate_pem, certificate_pem(expired), key_pem)


def _foreign_credential(cluster) -> CredentialBundle:
    """A client certificate of a CA the KMS does not know."""
    other = CertificateAuthority.create(cluster.root / f"other-ca-{time.monotonic_ns()}", "another CA")
    cert, key = other.issue("ap:stranger", organization="acme")
    return CredentialBundle(cluster.acme.ca_cert, certificate_pem(cert), key)


def _untrusting_credential(cluster) -> CredentialBundle:
    """The tenant's own certificate, but trusting another CA than the one of the KMS's certificate."""
    other = CertificateAuthority.create(cluster.root / f"trusted-ca-{time.monotonic_ns()}", "another CA")
    return CredentialBundle(other.certificate_pem, cluster.acme.client_cert, cluster.acme.client_key)


# -- a connection lost mid-call ----------------------------------------------------------------


class _Blocking:
    """An AsyncKmsClient's methods as blocking calls, run on the loop thread it was made on."""

    def __init__(self, thread: LoopThread, client: AsyncKmsClient) -> None:
        self._thread, self._client = thread, client

    def __getattr__(self, name: str):
        method = getattr(self._client, name)
        return lambda *args, **kwargs: self._thread.call(method(*args, **kwargs))


@contextlib.contextmanager
def _kms(kind: str, target: str, credentials: CredentialBundle, timeout: float, *, connect: bool = False):
    """A KmsClient, or an AsyncKmsClient behind the same blocking calls; with `connect`, its
    channel has done its TLS handshake (and answered no call yet)."""
    if kind == "sync":
        with KmsClient(target, credentials=credentials, timeout=timeout) as kms:
            if connect:
                grpc.channel_ready_future(kms._channel).result(timeout=30)
            yield kms
        return
    thread = LoopThread()

    async def open_client() -> AsyncKmsClient:
        client = AsyncKmsClient(target, credentials=credentials, timeout=timeout)
        if connect:
            await asyncio.wait_for(client._channel.channel_ready(), 30)
        return client

    client = thread.call(open_client())
    try:
        yield _Blocking(thread, client)
    finally:
        thread.call(client.close())
        thread.loop.call_soon_threadsafe(thread.loop.stop)
        thread.thread.join(10)


KINDS = ["sync", "async"]


@pytest.mark.parametrize("kind", KINDS)
def test_an_encrypt_and_a_decrypt_cut_off_mid_call_are_retried_once_the_server_is_back(cluster, proxy, kind):
    with _kms(kind, proxy.target, cluster.acme, RETRY_TIMEOUT, connect=True) as kms:
        proxy.cut_next_call(down_for=1.0)
        blob = kms.encrypt(cluster.key_id, PLAINTEXT).ciphertext_blob
        assert proxy.cuts == 1 and proxy.accepted >= 2  # cut, then served on a new connection

        proxy.cut_next_call(down_for=1.0)
        assert kms.decrypt(blob).plaintext == PLAINTEXT
        assert proxy.cuts == 2


@pytest.mark.parametrize("kind", KINDS)
def test_a_server_that_stays_gone_is_retried_to_the_deadline_and_not_blamed_on_the_certificate(cluster, proxy, kind):
    with _kms(kind, proxy.target, cluster.acme, 4, connect=True) as kms:
        proxy.cut_next_call(down_for=3600)
        started = time.monotonic()
        with pytest.raises(UnavailableError) as lost:
            kms.encrypt(cluster.key_id, PLAINTEXT)
        assert time.monotonic() - started >= 1  # retried, not given up on the first failure
    assert proxy.cuts == 1
    assert not isinstance(lost.value, TlsRefusedError)
    assert "certificate" not in lost.value.message


def test_a_client_started_while_the_server_is_down_waits_for_it(cluster, proxy):
    """A server not yet listening is retried, also once it listens again while gRPC's reconnect
    backoff still fails the channel's calls."""
    proxy.down()
    with KmsClient(proxy.target, credentials=cluster.acme, timeout=RETRY_TIMEOUT) as kms:
        started = time.monotonic()
        back = threading.Timer(1.5, proxy.up)
        back.start()
        try:
            assert kms.encrypt(cluster.key_id, b"late").key_id == cluster.key_id
        finally:
            back.cancel()
        assert time.monotonic() - started >= 1


# -- a connection TLS refused ------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("credential", [_expired_credential, _foreign_credential], ids=["expired", "other-ca"])
def test_a_client_certificate_the_server_refuses_is_not_retried_and_says_what_to_check(cluster, proxy, credential, kind):
    with _kms(kind, proxy.target, credential(cluster), REFUSED_TIMEOUT) as kms:
        started = time.monotonic()
        with pytest.raises(TlsRefusedError) as refused:
            kms.encrypt(cluster.key_id, b"x")
        assert time.monotonic() - started < REFUSED_TIMEOUT / 2  # not retried until the deadline
    assert isinstance(refused.value, UnavailableError) and refused.value.reason == "TLS_REFUSED"
    assert "client certificate is unexpired" in refused.value.message
    assert proxy.target in refused.value.message


def test_a_server_certificate_the_client_does_not_trust_is_not_retried(cluster):
    target = cluster.zone_targets["public"]
    with KmsClient(target, credentials=_untrusting_credential(cluster), timeout=REFUSED_TIMEOUT) as kms:
        started = time.monotonic()
        with pytest.raises(TlsRefusedError) as refused:
            kms.describe_key(cluster.key_id)
        assert time.monotonic() - started < REFUSED_TIMEOUT / 2
    assert "the CA the client trusts signed the server's certificate" in refused.value.message


# -- the relay ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_relay(tmp_path_factory):
    """A relay serving TLS with a certificate of its own CA: (target, that CA's PEM)."""
    root = tmp_path_factory.mktemp("tls-relay")
    ca = CertificateAuthority.create(root / "ca", "relay CA")
    cert, key = ca.issue("relay", hosts=("localhost", "127.0.0.1"), server=True, client=False)
    paths = write_credential(root / "pki", "relay", certificate_pem(cert), key, ca.certificate_pem)
    config = RelayConfig(
        listen="127.0.0.1:0", shutdown_grace_seconds=1, store=StoreConfig(str(root / "relay.db")),
        rate_limit=RateLimitConfig(requests_per_second=0, account_creations_per_minute=0),
        tls=ServerTlsConfig(cert=str(paths["cert"]), key=str(paths["key"])),
    )
    thread = LoopThread()

    async def start():
        server = RelayServer(config)
        return server, await server.start()

    server, port = thread.call(start())
    yield f"127.0.0.1:{port}", ca.certificate_pem
    thread.stop(server)


def test_the_relay_client_does_not_retry_a_send_that_tls_refused(tls_relay, tmp_path):
    target, relay_ca = tls_relay
    with RelayClient(target, credentials=CredentialBundle(relay_ca), timeout=30) as relay:
        token = relay.create_account("alice").device_token
    stranger = CertificateAuthority.create(tmp_path / "stranger", "another CA").certificate_pem
    relay = RelayClient(target, credentials=CredentialBundle(stranger), device_token=token, retry_seconds=60)
    with relay:
        started = time.monotonic()
        with pytest.raises(TlsRefusedError) as refused:
            relay.send("alice", b"note to self")
        assert time.monotonic() - started < 30  # retry_seconds is 60
    assert "the CA the client trusts signed the server's certificate" in refused.value.message
    assert "client certificate is unexpired" not in refused.value.message  # it has none


def test_a_plain_text_client_of_a_tls_relay_is_told_to_use_tls(tls_relay):
    target, _ = tls_relay
    with RelayClient(target, device_token="t" * 20, retry_seconds=60) as relay:
        started = time.monotonic()
        with pytest.raises(TlsRefusedError, match="speaks TLS"):
            relay.ack(["m-1"])
        assert time.monotonic() - started < 30


def test_the_relay_message_stream_stops_on_a_tls_refusal_instead_of_reconnecting(tls_relay, tmp_path):
    target, _ = tls_relay
    stranger = CertificateAuthority.create(tmp_path / "stranger", "another CA").certificate_pem
    outcome: queue.SimpleQueue = queue.SimpleQueue()

    def receive() -> None:  # on a daemon thread: a client that reconnects forever must not hang the test run
        with RelayClient(target, credentials=CredentialBundle(stranger), device_token="t" * 20) as relay:
            try:
                next(relay.messages())
            except Exception as exc:  # noqa: BLE001 - handed to the test
                outcome.put(exc)

    threading.Thread(target=receive, daemon=True).start()
    assert isinstance(outcome.get(timeout=30), TlsRefusedError)
