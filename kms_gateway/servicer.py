"""The gateway's KeyManagementService and AdminService: one listener (network zone) each, every
method a thin `async def` over `GatewayService`, which does the work."""

from __future__ import annotations

from typing import Any

from keyrelay.v1 import admin_pb2, admin_pb2_grpc, kms_pb2, kms_pb2_grpc
from kms_gateway.service import GatewayService


def _responses(module: Any, service: str) -> dict[str, Any]:
    """Method name -> response class, for every method of a service."""
    methods = module.DESCRIPTOR.services_by_name[service].methods_by_name
    return {name: getattr(module, method.output_type.name) for name, method in methods.items()}


_KMS_RESPONSES = _responses(kms_pb2, "KeyManagementService")
_ADMIN_RESPONSES = _responses(admin_pb2, "AdminService")


class GatewayKmsServicer(kms_pb2_grpc.KeyManagementServiceServicer):
    """KeyManagementService as served by one gateway listener (one network zone)."""

    def __init__(self, service: GatewayService, zone: str) -> None:
        self._service = service
        self._zone = zone


class GatewayAdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """AdminService as served by one gateway listener: forwarded to the shared KMS."""

    def __init__(self, service: GatewayService, zone: str) -> None:
        self._service = service
        self._zone = zone


def _kms_method(name: str, response_type: Any):
    async def method(self: GatewayKmsServicer, request, context):
        return await self._service.kms(self._zone, name, request, context, response_type)

    method.__name__ = name
    return method


def _admin_method(name: str, response_type: Any):
    async def method(self: GatewayAdminServicer, request, context):
        return await self._service.admin(self._zone, name, request, context, response_type)

    method.__name__ = name
    return method


for _name, _response in _KMS_RESPONSES.items():
    setattr(GatewayKmsServicer, _name, _kms_method(_name, _response))
for _name, _response in _ADMIN_RESPONSES.items():
    setattr(GatewayAdminServicer, _name, _admin_method(_name, _response))
