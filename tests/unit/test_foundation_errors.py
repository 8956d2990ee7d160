"""Unit tests of foundation/errors.py: one class per reason and status <-> class round trips."""

from __future__ import annotations

import grpc
import pytest

from foundation import errors
from foundation.errors import KeyrelayError, error_class_for, from_status
from keyrelay.v1 import errors_pb2


def _module_classes() -> list[type[KeyrelayError]]:
    """KeyrelayError and every subclass (at any depth) defined in foundation.errors."""
    found, todo = [KeyrelayError], [KeyrelayError]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub.__module__ == errors.__name__ and sub not in found:
                found.append(sub)
                todo.append(sub)
    return found


CLASSES = _module_classes()
SUBCLASSES = [cls for cls in CLASSES if cls is not KeyrelayError]


def test_hierarchy_is_complete():
    """The walk finds every class of the documented tree (guards the parametrized tests below)."""
    assert len(CLASSES) == 51
    assert errors.KeyVersionRetiredError in CLASSES and errors.HsmUnavailableError in CLASSES
    assert errors.MailboxFullError in CLASSES and errors.EnvelopeTooLargeError in CLASSES


@pytest.mark.parametrize("cls", SUBCLASSES, ids=lambda c: c.__name__)
def test_each_class_declares_its_own_reason(cls):
    """No class inherits its parent's reason: each one travels as its own name."""
    assert "reason" in cls.__dict__


def test_reasons_are_unique():
    """Two classes never share a reason, so a reason maps back to one class."""
    reasons = [cls.reason for cls in CLASSES]
    assert len(reasons) == len(set(reasons))


@pytest.mark.parametrize("cls", SUBCLASSES, ids=lambda c: c.__name__)
def test_code_is_the_branch_code(cls):
    """A subclass travels as the status code of its top-level branch."""
    branch = next(base for base in cls.__mro__ if KeyrelayError in base.__bases__)
    assert cls.code == branch.code
    assert cls.code != grpc.StatusCode.UNKNOWN


@pytest.mark.parametrize("cls", SUBCLASSES, ids=lambda c: c.__name__)
def test_reason_is_an_error_reason_or_the_code_name(cls):
    """Reasons are ErrorReason names (without prefix); generic branch classes may use their code's name."""
    names = {name.removeprefix("ERROR_REASON_") for name in errors_pb2.ErrorReason.keys()}
    assert cls.reason in names or cls.reason == cls.code.name


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_round_trip_through_status(cls):
    """(code, reason) maps back to the very class, with the message and request id."""
    assert error_class_for(cls.code, cls.reason) is cls
    err = from_status(cls.code, "something went wrong", cls.reason, request_id="req-1")
    assert type(err) is cls
    assert (err.code, err.reason, err.message, err.request_id) == (cls.code, cls.reason, "something went wrong", "req-1")
    assert str(err) == "something went wrong"


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_instance_round_trip(cls):
    """An instance's own code and reason rebuild an instance of the same class."""
    original = cls("boom")
    assert type(from_status(original.code, original.message, original.reason)) is cls


BRANCHES = [cls for cls in SUBCLASSES if KeyrelayError in cls.__bases__]


@pytest.mark.parametrize("cls", BRANCHES, ids=lambda c: c.__name__)
def test_unknown_or_missing_reason_falls_back_to_the_code_class(cls):
    """A reason this client does not know (or none) gives the class of the status code."""
    for reason in ("SOMETHING_NEWER", None, ""):
        assert error_class_for(cls.code, reason) is cls
        assert type(from_status(cls.code, "m", reason)) is cls


def test_reason_of_another_code_falls_back_to_the_code_class():
    """A known reason with a code it never travels with is not trusted: the code decides."""
    assert error_class_for(grpc.StatusCode.NOT_FOUND, "KEY_DISABLED") is errors.NotFoundError
    assert error_class_for(grpc.StatusCode.INVALID_ARGUMENT, "KEY_NOT_FOUND") is errors.InvalidArgumentError


def test_unmapped_code_keeps_code_and_reason():
    """A status code no class owns gives a KeyrelayError that still carries the real code."""
    err = from_status(grpc.StatusCode.OUT_OF_RANGE, "no such page", "KEY_STATE_CONFLICT", request_id="r")
    assert type(err) is KeyrelayError
    assert err.code == grpc.StatusCode.OUT_OF_RANGE
    assert err.reason == "KEY_STATE_CONFLICT"
    assert err.request_id == "r"
    bare = from_status(grpc.StatusCode.DATA_LOSS, "lost", None)
    assert (bare.code, bare.reason) == (grpc.StatusCode.DATA_LOSS, "UNSPECIFIED")
    # The class attributes are untouched by the per-instance override.
    assert KeyrelayError.code == grpc.StatusCode.UNKNOWN and KeyrelayError.reason == "UNSPECIFIED"


def test_a_status_without_reason_is_not_given_one():
    """gRPC's own RESOURCE_EXHAUSTED (a size or metadata limit) is not reported as a rate limit."""
    err = from_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "received metadata size exceeds hard limit", None)
    assert isinstance(err, errors.ResourceExhaustedError)
    assert err.reason == "UNSPECIFIED"
    assert errors.ResourceExhaustedError.reason == "RATE_LIMITED"


def test_quote_bounds_and_escapes_caller_text():
    assert errors.quote("alias/x") == "'alias/x'"
    long = errors.quote("p" * 20000)
    assert long == "'" + "p" * errors.QUOTE_CHARS + "…'"
    assert errors.quote("a\nb") == "'a\\nb'"  # one line, the newline escaped
    assert errors.quote("\x00" * 1000).isprintable() and len(errors.quote("\x00" * 1000)) < 4 * errors.QUOTE_CHARS + 8


def test_catching_by_branch():
    """Specific errors are caught by their branch class."""
    with pytest.raises(errors.FailedPreconditionError):
        raise errors.KeyDisabledError("disabled")
    assert issubclass(errors.SealedRecordMismatchError, errors.InvalidArgumentError)
    assert issubclass(errors.HsmUnavailableError, errors.UnavailableError)


def test_later_subclass_does_not_steal_a_reason_or_code():
    """The first class declaring a reason (or code) owns it; a later subclass redeclaring it does not."""

    class LocalKeyDisabled(errors.KeyDisabledError):
        code = grpc.StatusCode.FAILED_PRECONDITION
        reason = "KEY_DISABLED"

    assert error_class_for(grpc.StatusCode.FAILED_PRECONDITION, "KEY_DISABLED") is errors.KeyDisabledError
    assert error_class_for(grpc.StatusCode.FAILED_PRECONDITION, None) is errors.FailedPreconditionError


def test_the_sdk_exports_every_error_class():
    """`client_sdk` is the one public namespace: every class of the tree can be caught from it."""
    import client_sdk

    missing = [cls.__name__ for cls in CLASSES if getattr(client_sdk, cls.__name__, None) is not cls]
    assert not missing
