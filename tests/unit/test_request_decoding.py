"""Request decoding: every request type of every service decodes what a protobuf library writes,
refuses what it cannot parse as MalformedRequestError without quoting it, and refuses a uint64 no
store can hold wherever it sits in the message."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from foundation.errors import MalformedRequestError
from foundation.request_decoding import MAX_STORED_INT, RequestDecoder
from keyrelay.v1 import admin_pb2, directory_pb2, kms_pb2, registry_pb2, relay_pb2

MODULES = (admin_pb2, directory_pb2, kms_pb2, registry_pb2, relay_pb2)
REQUEST_TYPES = sorted(
    {
        getattr(module, method.input_type.name)
        for module in MODULES
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
        if method.input_type.file is module.DESCRIPTOR
    },
    key=lambda cls: cls.DESCRIPTOR.full_name,
)
uint64 = st.integers(0, 2**64 - 1)


def test_every_request_type_has_a_decoder():
    assert len(REQUEST_TYPES) > 40
    for cls in REQUEST_TYPES:
        assert RequestDecoder.for_deserializer(cls.FromString) is RequestDecoder.for_deserializer(cls.FromString)


@pytest.mark.parametrize("cls", REQUEST_TYPES, ids=lambda cls: cls.DESCRIPTOR.name)
@given(body=st.binary(max_size=200))
def test_any_body_decodes_or_is_malformed_request(cls, body):
    decoder = RequestDecoder(cls)
    try:
        message = decoder.decode(body)
    except MalformedRequestError as exc:
        # It names the type (or the out-of-range field), never the body.
        assert cls.DESCRIPTOR.full_name in exc.message or "values above 2^63-1" in exc.message
        assert len(body) < 8 or body.hex() not in exc.message
        return
    assert isinstance(message, cls)


@given(version=uint64)
def test_a_top_level_uint64_must_fit_a_store(version):
    body = directory_pb2.GetRecordRequest(user_id="alice", record_version=version).SerializeToString()
    decoder = RequestDecoder(directory_pb2.GetRecordRequest)
    if version <= MAX_STORED_INT:
        assert decoder.decode(body).record_version == version
    else:
        with pytest.raises(MalformedRequestError, match="record_version"):
            decoder.decode(body)


@given(record=uint64, bundle=uint64)
def test_a_nested_uint64_must_fit_a_store(record, bundle):
    request = directory_pb2.PublishRecordRequest(
        record=directory_pb2.DirectoryRecord(
            user_id="alice", record_version=record, sealed=kms_pb2.SealedPublicKey(bundle_version=bundle)
        )
    )
    decoder = RequestDecoder(directory_pb2.PublishRecordRequest)
    if max(record, bundle) <= MAX_STORED_INT:
        assert decoder.decode(request.SerializeToString()) == request
    else:
        with pytest.raises(MalformedRequestError, match="record\\.(record_version|sealed\\.bundle_version)"):
            decoder.decode(request.SerializeToString())


def test_bodies_that_do_not_parse_are_malformed():
    decoder = RequestDecoder(kms_pb2.CreateKeyRequest)
    for body in (b"\x01", b"\x0a\x02\xff\xfe", b"\x0b" * 200 + b"\x0c" * 200, b"\x0a\x05ab"):
        with pytest.raises(MalformedRequestError, match="not a valid keyrelay.v1.CreateKeyRequest"):
            decoder.decode(body)
