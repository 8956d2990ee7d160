"""Start-up: health answers NOT_SERVING and KMS calls UNAVAILABLE until the HSM login is done."""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import client_sdk as kr
from kms_node.hsm.pkcs11_pool import Pkcs11Pool


def _health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def test_not_serving_until_the_hsm_login_completes(node_config, hsm_pool_tokens, monkeypatch):
    from kms_node.server import NodeServer

    release = threading.Event()
    real_start = Pkcs11Pool.start

    async def slow_start(self):
        # Hold the real login back until the test has looked at the node.
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 30)
        await real_start(self)

    monkeypatch.setattr(Pkcs11Pool, "start", slow_start)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    bound = threading.Event()
    holder = {}

    async def start():
        holder["node"] = node = NodeServer(node_config, pin=hsm_pool_tokens[2])
        original = node._server.start

        async def start_and_signal():
            await original()
            bound.set()

        node._server.start = start_and_signal
        return await node.start()

    future = asyncio.run_coroutine_threadsafe(start(), loop)
    try:
        assert bound.wait(30)
        import time

        deadline = time.monotonic() + 10
        while holder["node"].port is None and time.monotonic() < deadline:
            time.sleep(0.05)
        target = f"127.0.0.1:{holder['node'].port}"
        assert _health(target) == health_pb2.HealthCheckResponse.NOT_SERVING
        with kr.KmsClient(target) as kms:
            with pytest.raises(kr.NodeNotReadyError, match="HSM"):
                kms.list_keys()
        release.set()
        future.result(60)
        assert _health(target) == health_pb2.HealthCheckResponse.SERVING
        with kr.KmsClient(target) as kms:
            assert kms.list_keys().keys == []
    finally:
        release.set()
        if "node" in holder:
            asyncio.run_coroutine_threadsafe(holder["node"].stop(grace=1), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_reflection_lists_the_node_services(served_node):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(served_node.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        names = {service.name for response in responses for service in response.list_services_response.service}
    assert names == {
        "keyrelay.v1.KeyManagementService",
        "keyrelay.v1.KeyRegistryService",  # a shared node is also the shared KMS of the gateway
        "keyrelay.v1.AccessRegistryService",
        "keyrelay.v1.AdminService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
