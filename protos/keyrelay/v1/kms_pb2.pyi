import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from keyrelay.v1 import errors_pb2 as _errors_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KeyState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KEY_STATE_UNSPECIFIED: _ClassVar[KeyState]
    KEY_STATE_CREATING: _ClassVar[KeyState]
    KEY_STATE_ENABLED: _ClassVar[KeyState]
    KEY_STATE_DISABLED: _ClassVar[KeyState]
    KEY_STATE_PENDING_DELETION: _ClassVar[KeyState]

class KeySpec(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KEY_SPEC_UNSPECIFIED: _ClassVar[KeySpec]
    KEY_SPEC_AES_256: _ClassVar[KeySpec]
KEY_STATE_UNSPECIFIED: KeyState
KEY_STATE_CREATING: KeyState
KEY_STATE_ENABLED: KeyState
KEY_STATE_DISABLED: KeyState
KEY_STATE_PENDING_DELETION: KeyState
KEY_SPEC_UNSPECIFIED: KeySpec
KEY_SPEC_AES_256: KeySpec

class KeyVersion(_message.Message):
    __slots__ = ("version", "create_time")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    version: int
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, version: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class KeyMetadata(_message.Message):
    __slots__ = ("key_id", "tenant_id", "description", "tags", "state", "instance_id", "key_spec", "primary_version", "min_decryption_version", "create_time", "deletion_time", "aliases", "versions")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_SPEC_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_VERSION_FIELD_NUMBER: _ClassVar[int]
    MIN_DECRYPTION_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    DELETION_TIME_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    tenant_id: str
    description: str
    tags: _containers.ScalarMap[str, str]
    state: KeyState
    instance_id: str
    key_spec: KeySpec
    primary_version: int
    min_decryption_version: int
    create_time: _timestamp_pb2.Timestamp
    deletion_time: _timestamp_pb2.Timestamp
    aliases: _containers.RepeatedScalarFieldContainer[str]
    versions: _containers.RepeatedCompositeFieldContainer[KeyVersion]
    def __init__(self, key_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., description: _Optional[str] = ..., tags: _Optional[_Mapping[str, str]] = ..., state: _Optional[_Union[KeyState, str]] = ..., instance_id: _Optional[str] = ..., key_spec: _Optional[_Union[KeySpec, str]] = ..., primary_version: _Optional[int] = ..., min_decryption_version: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deletion_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., aliases: _Optional[_Iterable[str]] = ..., versions: _Optional[_Iterable[_Union[KeyVersion, _Mapping]]] = ...) -> None: ...

class CreateKeyRequest(_message.Message):
    __slots__ = ("description", "tags", "alias", "instance_id", "key_spec", "key_id")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_SPEC_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    description: str
    tags: _containers.ScalarMap[str, str]
    alias: str
    instance_id: str
    key_spec: KeySpec
    key_id: str
    def __init__(self, description: _Optional[str] = ..., tags: _Optional[_Mapping[str, str]] = ..., alias: _Optional[str] = ..., instance_id: _Optional[str] = ..., key_spec: _Optional[_Union[KeySpec, str]] = ..., key_id: _Optional[str] = ...) -> None: ...

class CreateKeyResponse(_message.Message):
    __slots__ = ("key_metadata",)
    KEY_METADATA_FIELD_NUMBER: _ClassVar[int]
    key_metadata: KeyMetadata
    def __init__(self, key_metadata: _Optional[_Union[KeyMetadata, _Mapping]] = ...) -> None: ...

class DescribeKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class DescribeKeyResponse(_message.Message):
    __slots__ = ("key_metadata",)
    KEY_METADATA_FIELD_NUMBER: _ClassVar[int]
    key_metadata: KeyMetadata
    def __init__(self, key_metadata: _Optional[_Union[KeyMetadata, _Mapping]] = ...) -> None: ...

class ListKeysRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListKeysResponse(_message.Message):
    __slots__ = ("keys", "next_page_token")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[KeyMetadata]
    next_page_token: str
    def __init__(self, keys: _Optional[_Iterable[_Union[KeyMetadata, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class EnableKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class EnableKeyResponse(_message.Message):
    __slots__ = ("key_metadata",)
    KEY_METADATA_FIELD_NUMBER: _ClassVar[int]
    key_metadata: KeyMetadata
    def __init__(self, key_metadata: _Optional[_Union[KeyMetadata, _Mapping]] = ...) -> None: ...

class DisableKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class DisableKeyResponse(_message.Message):
    __slots__ = ("key_metadata",)
    KEY_METADATA_FIELD_NUMBER: _ClassVar[int]
    key_metadata: KeyMetadata
    def __init__(self, key_metadata: _Optional[_Union[KeyMetadata, _Mapping]] = ...) -> None: ...

class ScheduleKeyDeletionRequest(_message.Message):
    __slots__ = ("key_id", "pending_window_days")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PENDING_WINDOW_DAYS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    pending_window_days: int
    def __init__(self, key_id: _Optional[str] = ..., pending_window_days: _Optional[int] = ...) -> None: ...

class ScheduleKeyDeletionResponse(_message.Message):
    __slots__ = ("key_metadata",)
    KEY_METADATA_FIELD_NUMBER: _ClassVar[int]
    key_metadata: KeyMetadata
    def __init__(self, key_metadata: _Optional[_Union[KeyMetadata, _Mapping]] = ...) -> None: ...

class CancelKeyDeletionRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class CancelKeyDeletionResponse(_message.Message):
    __slots__ = ("key_metadata",)
    KEY_METADATA_FIELD_NUMBER: _ClassVar[int]
    key_metadata: KeyMetadata
    def __init__(self, key_metadata: _Optional[_Union[KeyMetadata, _Mapping]] = ...) -> None: ...

class RotateKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class RotateKeyResponse(_message.Message):
    __slots__ = ("key_metadata", "new_version")
    KEY_METADATA_FIELD_NUMBER: _ClassVar[int]
    NEW_VERSION_FIELD_NUMBER: _ClassVar[int]
    key_metadata: KeyMetadata
    new_version: int
    def __init__(self, key_metadata: _Optional[_Union[KeyMetadata, _Mapping]] = ..., new_version: _Optional[int] = ...) -> None: ...

class UpdateKeyRequest(_message.Message):
    __slots__ = ("key_id", "description", "min_decryption_version")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    MIN_DECRYPTION_VERSION_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    description: str
    min_decryption_version: int
    def __init__(self, key_id: _Optional[str] = ..., description: _Optional[str] = ..., min_decryption_version: _Optional[int] = ...) -> None: ...

class UpdateKeyResponse(_message.Message):
    __slots__ = ("key_metadata",)
    KEY_METADATA_FIELD_NUMBER: _ClassVar[int]
    key_metadata: KeyMetadata
    def __init__(self, key_metadata: _Optional[_Union[KeyMetadata, _Mapping]] = ...) -> None: ...

class CreateAliasRequest(_message.Message):
    __slots__ = ("alias", "key_id")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    alias: str
    key_id: str
    def __init__(self, alias: _Optional[str] = ..., key_id: _Optional[str] = ...) -> None: ...

class CreateAliasResponse(_message.Message):
    __slots__ = ("key_metadata",)
    KEY_METADATA_FIELD_NUMBER: _ClassVar[int]
    key_metadata: KeyMetadata
    def __init__(self, key_metadata: _Optional[_Union[KeyMetadata, _Mapping]] = ...) -> None: ...

class DeleteAliasRequest(_message.Message):
    __slots__ = ("alias",)
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    alias: str
    def __init__(self, alias: _Optional[str] = ...) -> None: ...

class DeleteAliasResponse(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class EncryptRequest(_message.Message):
    __slots__ = ("key_id", "plaintext", "encryption_context")
    class EncryptionContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    plaintext: bytes
    encryption_context: _containers.ScalarMap[str, str]
    def __init__(self, key_id: _Optional[str] = ..., plaintext: _Optional[bytes] = ..., encryption_context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class EncryptResponse(_message.Message):
    __slots__ = ("ciphertext_blob", "key_id", "key_version")
    CIPHERTEXT_BLOB_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    ciphertext_blob: bytes
    key_id: str
    key_version: int
    def __init__(self, ciphertext_blob: _Optional[bytes] = ..., key_id: _Optional[str] = ..., key_version: _Optional[int] = ...) -> None: ...

class DecryptRequest(_message.Message):
    __slots__ = ("ciphertext_blob", "encryption_context", "key_id")
    class EncryptionContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CIPHERTEXT_BLOB_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ciphertext_blob: bytes
    encryption_context: _containers.ScalarMap[str, str]
    key_id: str
    def __init__(self, ciphertext_blob: _Optional[bytes] = ..., encryption_context: _Optional[_Mapping[str, str]] = ..., key_id: _Optional[str] = ...) -> None: ...

class DecryptResponse(_message.Message):
    __slots__ = ("plaintext", "key_id", "key_version")
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    plaintext: bytes
    key_id: str
    key_version: int
    def __init__(self, plaintext: _Optional[bytes] = ..., key_id: _Optional[str] = ..., key_version: _Optional[int] = ...) -> None: ...

class ReEncryptRequest(_message.Message):
    __slots__ = ("ciphertext_blob", "source_encryption_context", "destination_key_id", "destination_encryption_context")
    class SourceEncryptionContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class DestinationEncryptionContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CIPHERTEXT_BLOB_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ENCRYPTION_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_ENCRYPTION_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    ciphertext_blob: bytes
    source_encryption_context: _containers.ScalarMap[str, str]
    destination_key_id: str
    destination_encryption_context: _containers.ScalarMap[str, str]
    def __init__(self, ciphertext_blob: _Optional[bytes] = ..., source_encryption_context: _Optional[_Mapping[str, str]] = ..., destination_key_id: _Optional[str] = ..., destination_encryption_context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ReEncryptResponse(_message.Message):
    __slots__ = ("ciphertext_blob", "source_key_id", "source_key_version", "key_id", "key_version")
    CIPHERTEXT_BLOB_FIELD_NUMBER: _ClassVar[int]
    SOURCE_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    ciphertext_blob: bytes
    source_key_id: str
    source_key_version: int
    key_id: str
    key_version: int
    def __init__(self, ciphertext_blob: _Optional[bytes] = ..., source_key_id: _Optional[str] = ..., source_key_version: _Optional[int] = ..., key_id: _Optional[str] = ..., key_version: _Optional[int] = ...) -> None: ...

class GenerateDataKeyRequest(_message.Message):
    __slots__ = ("key_id", "number_of_bytes", "encryption_context")
    class EncryptionContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    NUMBER_OF_BYTES_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    number_of_bytes: int
    encryption_context: _containers.ScalarMap[str, str]
    def __init__(self, key_id: _Optional[str] = ..., number_of_bytes: _Optional[int] = ..., encryption_context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GenerateDataKeyResponse(_message.Message):
    __slots__ = ("plaintext", "ciphertext_blob", "key_id", "key_version")
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_BLOB_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    plaintext: bytes
    ciphertext_blob: bytes
    key_id: str
    key_version: int
    def __init__(self, plaintext: _Optional[bytes] = ..., ciphertext_blob: _Optional[bytes] = ..., key_id: _Optional[str] = ..., key_version: _Optional[int] = ...) -> None: ...

class GenerateDataKeyWithoutPlaintextRequest(_message.Message):
    __slots__ = ("key_id", "number_of_bytes", "encryption_context")
    class EncryptionContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    NUMBER_OF_BYTES_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    number_of_bytes: int
    encryption_context: _containers.ScalarMap[str, str]
    def __init__(self, key_id: _Optional[str] = ..., number_of_bytes: _Optional[int] = ..., encryption_context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GenerateDataKeyWithoutPlaintextResponse(_message.Message):
    __slots__ = ("ciphertext_blob", "key_id", "key_version")
    CIPHERTEXT_BLOB_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    ciphertext_blob: bytes
    key_id: str
    key_version: int
    def __init__(self, ciphertext_blob: _Optional[bytes] = ..., key_id: _Optional[str] = ..., key_version: _Optional[int] = ...) -> None: ...

class BatchDecryptRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[BatchDecryptItem]
    def __init__(self, items: _Optional[_Iterable[_Union[BatchDecryptItem, _Mapping]]] = ...) -> None: ...

class BatchDecryptItem(_message.Message):
    __slots__ = ("ciphertext_blob", "encryption_context")
    class EncryptionContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CIPHERTEXT_BLOB_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    ciphertext_blob: bytes
    encryption_context: _containers.ScalarMap[str, str]
    def __init__(self, ciphertext_blob: _Optional[bytes] = ..., encryption_context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class BatchDecryptResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[BatchDecryptResult]
    def __init__(self, results: _Optional[_Iterable[_Union[BatchDecryptResult, _Mapping]]] = ...) -> None: ...

class BatchDecryptResult(_message.Message):
    __slots__ = ("plaintext", "key_id", "key_version", "error")
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    plaintext: bytes
    key_id: str
    key_version: int
    error: _errors_pb2.ItemError
    def __init__(self, plaintext: _Optional[bytes] = ..., key_id: _Optional[str] = ..., key_version: _Optional[int] = ..., error: _Optional[_Union[_errors_pb2.ItemError, _Mapping]] = ...) -> None: ...

class BatchGenerateDataKeyRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[BatchGenerateDataKeyItem]
    def __init__(self, items: _Optional[_Iterable[_Union[BatchGenerateDataKeyItem, _Mapping]]] = ...) -> None: ...

class BatchGenerateDataKeyItem(_message.Message):
    __slots__ = ("key_id", "number_of_bytes", "encryption_context")
    class EncryptionContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    NUMBER_OF_BYTES_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    number_of_bytes: int
    encryption_context: _containers.ScalarMap[str, str]
    def __init__(self, key_id: _Optional[str] = ..., number_of_bytes: _Optional[int] = ..., encryption_context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class BatchGenerateDataKeyResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[BatchGenerateDataKeyResult]
    def __init__(self, results: _Optional[_Iterable[_Union[BatchGenerateDataKeyResult, _Mapping]]] = ...) -> None: ...

class BatchGenerateDataKeyResult(_message.Message):
    __slots__ = ("plaintext", "ciphertext_blob", "key_id", "key_version", "error")
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_BLOB_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    plaintext: bytes
    ciphertext_blob: bytes
    key_id: str
    key_version: int
    error: _errors_pb2.ItemError
    def __init__(self, plaintext: _Optional[bytes] = ..., ciphertext_blob: _Optional[bytes] = ..., key_id: _Optional[str] = ..., key_version: _Optional[int] = ..., error: _Optional[_Union[_errors_pb2.ItemError, _Mapping]] = ...) -> None: ...

class GenerateRandomRequest(_message.Message):
    __slots__ = ("number_of_bytes",)
    NUMBER_OF_BYTES_FIELD_NUMBER: _ClassVar[int]
    number_of_bytes: int
    def __init__(self, number_of_bytes: _Optional[int] = ...) -> None: ...

class GenerateRandomResponse(_message.Message):
    __slots__ = ("random",)
    RANDOM_FIELD_NUMBER: _ClassVar[int]
    random: bytes
    def __init__(self, random: _Optional[bytes] = ...) -> None: ...

class SealPublicKeyRequest(_message.Message):
    __slots__ = ("key_id", "user_id", "public_key_bundle", "bundle_version")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    user_id: str
    public_key_bundle: bytes
    bundle_version: int
    def __init__(self, key_id: _Optional[str] = ..., user_id: _Optional[str] = ..., public_key_bundle: _Optional[bytes] = ..., bundle_version: _Optional[int] = ...) -> None: ...

class SealPublicKeyResponse(_message.Message):
    __slots__ = ("sealed", "key_id", "key_version")
    SEALED_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    sealed: SealedPublicKey
    key_id: str
    key_version: int
    def __init__(self, sealed: _Optional[_Union[SealedPublicKey, _Mapping]] = ..., key_id: _Optional[str] = ..., key_version: _Optional[int] = ...) -> None: ...

class SealedPublicKey(_message.Message):
    __slots__ = ("user_id", "bundle_version", "sealed_bundle", "wrapped_dek")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    SEALED_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_DEK_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    bundle_version: int
    sealed_bundle: bytes
    wrapped_dek: bytes
    def __init__(self, user_id: _Optional[str] = ..., bundle_version: _Optional[int] = ..., sealed_bundle: _Optional[bytes] = ..., wrapped_dek: _Optional[bytes] = ...) -> None: ...

class OpenPublicKeyRequest(_message.Message):
    __slots__ = ("sealed",)
    SEALED_FIELD_NUMBER: _ClassVar[int]
    sealed: SealedPublicKey
    def __init__(self, sealed: _Optional[_Union[SealedPublicKey, _Mapping]] = ...) -> None: ...

class OpenPublicKeyResponse(_message.Message):
    __slots__ = ("public_key_bundle", "key_id", "key_version")
    PUBLIC_KEY_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    public_key_bundle: bytes
    key_id: str
    key_version: int
    def __init__(self, public_key_bundle: _Optional[bytes] = ..., key_id: _Optional[str] = ..., key_version: _Optional[int] = ...) -> None: ...
