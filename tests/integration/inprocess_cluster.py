"""A whole KMS in this process: a shared node, a dedicated node with its private endpoint, and a
gateway with three listener zones, each grpc.aio server on its own event-loop thread and a port
the OS chose, on real SoftHSM tokens, with the PKI a deployment has (an internal CA for
gateway <-> node mutual TLS, a KMS CA for server certificates and access-point credentials).

The shared node writes the bootstrap operator credential at start; `operator` holds it.
`Credentials.channel(target)` opens a mutual-TLS channel with an access point's credential.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc

from client_sdk import AdminClient
from client_sdk.credentials import CredentialBundle
from foundation.config import Secret
from foundation.pki import CertificateAuthority, certificate_pem, write_credential
from foundation.tls import channel_credentials_from_pem
from kms_gateway.config import AuditConfig, GatewayConfig, InternalTlsConfig, RateLimitConfig, ServerTlsConfig
from kms_node.config import CaConfig, HsmConfig, NodeConfig, PrivateEndpointConfig, StoreConfig, TlsConfig
from kms_node.devsetup import DEV_PIN, DEV_SO_PIN, softhsm_module
from kms_node.hsm.provision import provision_pool
from loop_thread import LoopThread

HOSTS = ("127.0.0.1", "localhost")
GATEWAY_CN = "keyrelay-gateway"
ZONES = ("public", "vpc", "ops")


@dataclass
class Credentials:
    """An access point's client certificate, key and the KMS CA."""

    bundle: CredentialBundle

    def channel(self, target: str) -> grpc.Channel:
        creds = channel_credentials_from_pem(self.bundle.ca_cert, self.bundle.client_cert, self.bundle.client_key)
        return grpc.secure_channel(target, creds)


class InProcessCluster:
    """Start with `start()`, stop with `stop()`."""

    def __init__(
        self,
        root: Path,
        *,
        instance_id: str = "acme-vault",
        gateway: dict | None = None,
        private_endpoint: dict | None = None,
    ) -> None:
        self.root = Path(root)
        self.instance_id = instance_id
        self._gateway_settings = gateway or {}
        self._private_settings = private_endpoint or {}
        self._threads: list[tuple[LoopThread, object]] = []

    # -- set-up -----------------------------------------------------------------------------

    def _issue(self, ca: CertificateAuthority, name: str, *, server: bool, client: bool) -> tuple[str, str]:
        cert, key = ca.issue(name, hosts=HOSTS, server=server, client=client)
        paths = write_credential(self.root / "pki", name, certificate_pem(cert), key, ca.certificate_pem)
        return str(paths["cert"]), str(paths["key"])

    def _pool(self, name: str) -> HsmConfig:
        labels = [f"{name}-{uuid.uuid4().hex[:6]}"]
        module = softhsm_module()
        provision_pool(module, labels, so_pin=Secret(DEV_SO_PIN), user_pin=Secret(DEV_PIN),
                       domain_key_label="keyrelay-domain-key")
        return HsmConfig(module=module, tokens=tuple(labels), slot_retry_seconds=0.5, sessions_per_slot=2)

    def _serve(self, make, *args, **kwargs):
        """Create and start a server on a loop thread of its own (grpc.aio binds to its loop)."""
        thread = LoopThread()

        async def start():
            server = make(*args, **kwargs)
            return server, await server.start()

        server, answer = thread.call(start())
        self._threads.append((thread, server))
        return server, answer

    def start(self) -> "InProcessCluster":
        from kms_gateway.server import GatewayServer
        from kms_node.server import NodeServer

        internal = CertificateAuthority.create(self.root / "internal-ca", "test internal CA")
        kms = CertificateAuthority.create(self.root / "kms-ca", "test KMS CA")
        internal_ca, kms_ca = str(self.root / "internal-ca" / "ca.crt"), str(self.root / "kms-ca" / "ca.crt")
        pin = Secret(DEV_PIN)

        shared_cert = self._issue(internal, "keyrelay-node-shared", server=True, client=True)
        self.bootstrap_dir = self.root / "bootstrap"
        shared_config = NodeConfig(
            listen="127.0.0.1:0", shutdown_grace_seconds=1, hsm=self._pool("shared"),
            store=StoreConfig(path=str(self.root / "shared.db")),
            tls=TlsConfig(cert=shared_cert[0], key=shared_cert[1], client_ca=internal_ca, gateway_cn=GATEWAY_CN),
            ca=CaConfig(cert=kms_ca, key=str(self.root / "kms-ca" / "ca.key"), bootstrap_dir=str(self.bootstrap_dir)),
        )
        self.shared, shared_port = self._serve(NodeServer, shared_config, pin=pin)
        self.shared_target = f"127.0.0.1:{shared_port}"

        dedicated_cert = self._issue(internal, f"keyrelay-node-{self.instance_id}", server=True, client=True)
        private_cert = self._issue(kms, "private-endpoint", server=True, client=False)
        self.private_audit = self.root / "private-audit.log"
        private = PrivateEndpointConfig(**{
            "listen": "127.0.0.1:0", "cert": private_cert[0], "key": private_cert[1], "client_ca": kms_ca,
            "registry_nodes": (self.shared_target,), "credential_cache_seconds": 5,
            "audit_path": str(self.private_audit), "requests_per_second": 0, **self._private_settings,
        })
        dedicated_config = NodeConfig(
            mode="dedicated", instance_id=self.instance_id, listen="127.0.0.1:0", shutdown_grace_seconds=1,
            hsm=self._pool("dedicated"), store=StoreConfig(path=str(self.root / "dedicated.db")),
            tls=TlsConfig(cert=dedicated_cert[0], key=dedicated_cert[1], client_ca=internal_ca, gateway_cn=GATEWAY_CN),
            private_endpoint=private,
        )
        self.dedicated, dedicated_port = self._serve(NodeServer, dedicated_config, pin=pin)
        self.dedicated_target = f"127.0.0.1:{dedicated_port}"
        self.private_target = f"127.0.0.1:{self.dedicated.private_port}"

        self.gateway_client = gateway_client = self._issue(internal, GATEWAY_CN, server=False, client=True)
        self.internal_ca = internal_ca
        gateway_server = self._issue(kms, "gateway", server=True, client=False)
        self.audit = self.root / "audit.log"
        settings = {"rate_limit": RateLimitConfig(0, 1), "credential_cache_seconds": 5, **self._gateway_settings}
        gateway_config = GatewayConfig(
            listeners={zone: "127.0.0.1:0" for zone in ZONES}, shared_nodes=(self.shared_target,),
            shutdown_grace_seconds=1, health_check_seconds=0.5,
            tls=ServerTlsConfig(cert=gateway_server[0], key=gateway_server[1], client_ca=kms_ca),
            internal=InternalTlsConfig(ca=internal_ca, cert=gateway_client[0], key=gateway_client[1]),
            audit=AuditConfig(path=str(self.audit)), **settings,
        )
        self.gateway, ports = self._serve(GatewayServer, gateway_config)
        self.zone_targets = {zone: f"127.0.0.1:{port}" for zone, port in ports.items()}

        self.operator = Credentials(CredentialBundle(
            (self.bootstrap_dir / "ca.crt").read_bytes(),
            (self.bootstrap_dir / "bootstrap-admin.crt").read_bytes(),
            (self.bootstrap_dir / "bootstrap-admin.key").read_bytes(),
        ))
        return self

    def stop(self) -> None:
        for thread, server in reversed(self._threads):
            thread.stop(server)

    # -- clients ----------------------------------------------------------------------------

    def internal_channel(self, target: str) -> grpc.Channel:
        """A channel to a node's internal port with the gateway's own certificate (what only the
        gateway, or whoever stole its key, can open)."""
        cert, key = (Path(p).read_bytes() for p in self.gateway_client)
        return grpc.secure_channel(target, channel_credentials_from_pem(Path(self.internal_ca).read_bytes(), cert, key))

    def admin(self, credentials: Credentials | None = None, zone: str = "public") -> AdminClient:
        """An AdminClient at a gateway zone (the bootstrap operator's credential by default)."""
        bundle = (credentials or self.operator).bundle
        return AdminClient(self.zone_targets[zone], credentials=bundle, timeout=30)

    def owned_by(self, tenant: str) -> Credentials:
        """Register the dedicated instance to `tenant` (with its node and private endpoint) and
        return the credential of a new admin access point of that tenant covering every key."""
        with self.admin() as operator:
            operator.register_instance(self.instance_id, tenant, [self.dedicated_target], self.private_target)
            point = operator.create_access_point(tenant, f"ap-{uuid.uuid4().hex[:6]}", ["admin"], ["*"])
            return self.issue(point.access_point_id, operator)

    def issue(self, access_point_id: str, admin: AdminClient | None = None) -> Credentials:
        """A fresh credential of an access point, issued by `admin` (the operator's by default)."""
        client = admin or self.admin()
        try:
            issued = client.issue_credential(access_point_id)
        finally:
            if admin is None:
                client.close()
        return Credentials(CredentialBundle(issued.ca_certificate_pem, issued.certificate_pem, issued.private_key_pem))
