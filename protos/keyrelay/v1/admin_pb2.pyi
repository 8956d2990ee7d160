import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AccessPointRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACCESS_POINT_ROLE_UNSPECIFIED: _ClassVar[AccessPointRole]
    ACCESS_POINT_ROLE_ADMIN: _ClassVar[AccessPointRole]
    ACCESS_POINT_ROLE_CRYPTO_USER: _ClassVar[AccessPointRole]
    ACCESS_POINT_ROLE_MESSAGING_USER: _ClassVar[AccessPointRole]
    ACCESS_POINT_ROLE_KEY_ADMIN: _ClassVar[AccessPointRole]
    ACCESS_POINT_ROLE_ACCESS_ADMIN: _ClassVar[AccessPointRole]
ACCESS_POINT_ROLE_UNSPECIFIED: AccessPointRole
ACCESS_POINT_ROLE_ADMIN: AccessPointRole
ACCESS_POINT_ROLE_CRYPTO_USER: AccessPointRole
ACCESS_POINT_ROLE_MESSAGING_USER: AccessPointRole
ACCESS_POINT_ROLE_KEY_ADMIN: AccessPointRole
ACCESS_POINT_ROLE_ACCESS_ADMIN: AccessPointRole

class InstancePolicy(_message.Message):
    __slots__ = ("management_zones", "allow_public_crypto")
    MANAGEMENT_ZONES_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PUBLIC_CRYPTO_FIELD_NUMBER: _ClassVar[int]
    management_zones: _containers.RepeatedScalarFieldContainer[str]
    allow_public_crypto: bool
    def __init__(self, management_zones: _Optional[_Iterable[str]] = ..., allow_public_crypto: _Optional[bool] = ...) -> None: ...

class Instance(_message.Message):
    __slots__ = ("instance_id", "tenant_id", "node_endpoints", "private_endpoint", "policy", "create_time")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    PRIVATE_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    tenant_id: str
    node_endpoints: _containers.RepeatedScalarFieldContainer[str]
    private_endpoint: str
    policy: InstancePolicy
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, instance_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., node_endpoints: _Optional[_Iterable[str]] = ..., private_endpoint: _Optional[str] = ..., policy: _Optional[_Union[InstancePolicy, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RegisterInstanceRequest(_message.Message):
    __slots__ = ("instance_id", "tenant_id", "node_endpoints", "private_endpoint", "policy")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    PRIVATE_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    tenant_id: str
    node_endpoints: _containers.RepeatedScalarFieldContainer[str]
    private_endpoint: str
    policy: InstancePolicy
    def __init__(self, instance_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., node_endpoints: _Optional[_Iterable[str]] = ..., private_endpoint: _Optional[str] = ..., policy: _Optional[_Union[InstancePolicy, _Mapping]] = ...) -> None: ...

class RegisterInstanceResponse(_message.Message):
    __slots__ = ("instance",)
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    instance: Instance
    def __init__(self, instance: _Optional[_Union[Instance, _Mapping]] = ...) -> None: ...

class DescribeInstanceRequest(_message.Message):
    __slots__ = ("instance_id",)
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    def __init__(self, instance_id: _Optional[str] = ...) -> None: ...

class DescribeInstanceResponse(_message.Message):
    __slots__ = ("instance",)
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    instance: Instance
    def __init__(self, instance: _Optional[_Union[Instance, _Mapping]] = ...) -> None: ...

class ListInstancesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListInstancesResponse(_message.Message):
    __slots__ = ("instances", "next_page_token")
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    instances: _containers.RepeatedCompositeFieldContainer[Instance]
    next_page_token: str
    def __init__(self, instances: _Optional[_Iterable[_Union[Instance, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class AccessPoint(_message.Message):
    __slots__ = ("access_point_id", "tenant_id", "name", "role", "key_patterns", "allowed_zones", "allowed_cidrs", "create_time", "roles", "operator")
    ACCESS_POINT_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    KEY_PATTERNS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_ZONES_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_CIDRS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    access_point_id: str
    tenant_id: str
    name: str
    role: AccessPointRole
    key_patterns: _containers.RepeatedScalarFieldContainer[str]
    allowed_zones: _containers.RepeatedScalarFieldContainer[str]
    allowed_cidrs: _containers.RepeatedScalarFieldContainer[str]
    create_time: _timestamp_pb2.Timestamp
    roles: _containers.RepeatedScalarFieldContainer[AccessPointRole]
    operator: bool
    def __init__(self, access_point_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., name: _Optional[str] = ..., role: _Optional[_Union[AccessPointRole, str]] = ..., key_patterns: _Optional[_Iterable[str]] = ..., allowed_zones: _Optional[_Iterable[str]] = ..., allowed_cidrs: _Optional[_Iterable[str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., roles: _Optional[_Iterable[_Union[AccessPointRole, str]]] = ..., operator: _Optional[bool] = ...) -> None: ...

class CreateAccessPointRequest(_message.Message):
    __slots__ = ("tenant_id", "name", "role", "key_patterns", "allowed_zones", "allowed_cidrs", "roles", "operator")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    KEY_PATTERNS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_ZONES_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_CIDRS_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    name: str
    role: AccessPointRole
    key_patterns: _containers.RepeatedScalarFieldContainer[str]
    allowed_zones: _containers.RepeatedScalarFieldContainer[str]
    allowed_cidrs: _containers.RepeatedScalarFieldContainer[str]
    roles: _containers.RepeatedScalarFieldContainer[AccessPointRole]
    operator: bool
    def __init__(self, tenant_id: _Optional[str] = ..., name: _Optional[str] = ..., role: _Optional[_Union[AccessPointRole, str]] = ..., key_patterns: _Optional[_Iterable[str]] = ..., allowed_zones: _Optional[_Iterable[str]] = ..., allowed_cidrs: _Optional[_Iterable[str]] = ..., roles: _Optional[_Iterable[_Union[AccessPointRole, str]]] = ..., operator: _Optional[bool] = ...) -> None: ...

class CreateAccessPointResponse(_message.Message):
    __slots__ = ("access_point",)
    ACCESS_POINT_FIELD_NUMBER: _ClassVar[int]
    access_point: AccessPoint
    def __init__(self, access_point: _Optional[_Union[AccessPoint, _Mapping]] = ...) -> None: ...

class DescribeAccessPointRequest(_message.Message):
    __slots__ = ("access_point_id",)
    ACCESS_POINT_ID_FIELD_NUMBER: _ClassVar[int]
    access_point_id: str
    def __init__(self, access_point_id: _Optional[str] = ...) -> None: ...

class DescribeAccessPointResponse(_message.Message):
    __slots__ = ("access_point",)
    ACCESS_POINT_FIELD_NUMBER: _ClassVar[int]
    access_point: AccessPoint
    def __init__(self, access_point: _Optional[_Union[AccessPoint, _Mapping]] = ...) -> None: ...

class ListAccessPointsRequest(_message.Message):
    __slots__ = ("tenant_id", "page_size", "page_token")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    page_size: int
    page_token: str
    def __init__(self, tenant_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAccessPointsResponse(_message.Message):
    __slots__ = ("access_points", "next_page_token")
    ACCESS_POINTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    access_points: _containers.RepeatedCompositeFieldContainer[AccessPoint]
    next_page_token: str
    def __init__(self, access_points: _Optional[_Iterable[_Union[AccessPoint, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteAccessPointRequest(_message.Message):
    __slots__ = ("access_point_id",)
    ACCESS_POINT_ID_FIELD_NUMBER: _ClassVar[int]
    access_point_id: str
    def __init__(self, access_point_id: _Optional[str] = ...) -> None: ...

class DeleteAccessPointResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Credential(_message.Message):
    __slots__ = ("serial", "access_point_id", "not_before", "not_after", "revoked", "revoke_time", "fingerprint_sha256")
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    ACCESS_POINT_ID_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    REVOKE_TIME_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_SHA256_FIELD_NUMBER: _ClassVar[int]
    serial: str
    access_point_id: str
    not_before: _timestamp_pb2.Timestamp
    not_after: _timestamp_pb2.Timestamp
    revoked: bool
    revoke_time: _timestamp_pb2.Timestamp
    fingerprint_sha256: str
    def __init__(self, serial: _Optional[str] = ..., access_point_id: _Optional[str] = ..., not_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., not_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoked: _Optional[bool] = ..., revoke_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., fingerprint_sha256: _Optional[str] = ...) -> None: ...

class IssueCredentialRequest(_message.Message):
    __slots__ = ("access_point_id", "certificate_signing_request_pem", "validity_days")
    ACCESS_POINT_ID_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_SIGNING_REQUEST_PEM_FIELD_NUMBER: _ClassVar[int]
    VALIDITY_DAYS_FIELD_NUMBER: _ClassVar[int]
    access_point_id: str
    certificate_signing_request_pem: str
    validity_days: int
    def __init__(self, access_point_id: _Optional[str] = ..., certificate_signing_request_pem: _Optional[str] = ..., validity_days: _Optional[int] = ...) -> None: ...

class IssueCredentialResponse(_message.Message):
    __slots__ = ("credential", "certificate_pem", "ca_certificate_pem")
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    credential: Credential
    certificate_pem: str
    ca_certificate_pem: str
    def __init__(self, credential: _Optional[_Union[Credential, _Mapping]] = ..., certificate_pem: _Optional[str] = ..., ca_certificate_pem: _Optional[str] = ...) -> None: ...

class ListCredentialsRequest(_message.Message):
    __slots__ = ("access_point_id",)
    ACCESS_POINT_ID_FIELD_NUMBER: _ClassVar[int]
    access_point_id: str
    def __init__(self, access_point_id: _Optional[str] = ...) -> None: ...

class ListCredentialsResponse(_message.Message):
    __slots__ = ("credentials",)
    CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    credentials: _containers.RepeatedCompositeFieldContainer[Credential]
    def __init__(self, credentials: _Optional[_Iterable[_Union[Credential, _Mapping]]] = ...) -> None: ...

class RevokeCredentialRequest(_message.Message):
    __slots__ = ("serial",)
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    serial: str
    def __init__(self, serial: _Optional[str] = ...) -> None: ...

class RevokeCredentialResponse(_message.Message):
    __slots__ = ("credential",)
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    credential: Credential
    def __init__(self, credential: _Optional[_Union[Credential, _Mapping]] = ...) -> None: ...
