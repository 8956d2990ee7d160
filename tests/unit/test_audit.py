"""The audit log's hash chain: appends continue across reopen, and `verify` names the first line
that was edited, dropped, moved or cut short."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import stat

import pytest

from client_sdk.cli import audit_commands
from foundation.audit import GENESIS, AuditLog, AuditLogError, utc_now, verify

COUNT = 7
# The line numbers (1-based) the tampering tests touch: start, middle and end.
PLACES = {"first": 1, "middle": 4, "last": COUNT}


def _record(i: int) -> dict:
    return {
        "time": utc_now(), "request_id": f"req-{i}", "tenant": "acme", "access_point": "ap-1",
        "credential_serial": "01ab", "zone": "internal", "peer": "ipv4:127.0.0.1:5000",
        "operation": "Decrypt", "key_id": "k-1", "key_version": 1, "route": "shared",
        "status": "OK", "reason": "", "latency_ms": 1.25 + i,
    }


@pytest.fixture
def log_path(tmp_path):
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        for i in range(COUNT):
            log.append(_record(i))
    return path


def _lines(path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _write(path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def test_records_are_chained_canonical_json(log_path):
    lines = _lines(log_path)
    assert len(lines) == COUNT
    first = json.loads(lines[0])
    assert first["seq"] == 1 and first["prev"] == GENESIS and first["operation"] == "Decrypt"
    second = json.loads(lines[1])
    assert second["seq"] == 2 and len(second["hash"]) == 64
    for line in lines:
        assert line.endswith(b"\n")
        assert line[:-1] == json.dumps(json.loads(line), sort_keys=True, separators=(",", ":")).encode()
    assert verify(log_path).ok


def test_file_mode_is_at_most_0640(tmp_path):
    path = tmp_path / "new.jsonl"
    AuditLog(path).close()
    assert stat.S_IMODE(os.stat(path).st_mode) & ~0o640 == 0


def test_reopen_continues_the_chain(log_path):
    with AuditLog(log_path) as log:
        assert log.seq == COUNT
        log.append(_record(99))
        head = log.head
    report = verify(log_path)
    assert report.ok and report.records == COUNT + 1 and report.head == head
    assert json.loads(_lines(log_path)[-1])["seq"] == COUNT + 1


def test_time_is_rfc3339_utc_with_milliseconds():
    stamp = utc_now()
    assert stamp.endswith("Z") and len(stamp) == len("2025-01-31T12:00:00.123Z")


def test_chain_fields_cannot_be_set_by_the_caller(tmp_path):
    with AuditLog(tmp_path / "a.jsonl") as log:
        with pytest.raises(ValueError, match="seq"):
            log.append({"seq": 5})
        assert log.seq == 0


def test_a_second_writer_is_refused(log_path):
    with AuditLog(log_path):
        with pytest.raises(AuditLogError, match="another writer"):
            AuditLog(log_path)


@pytest.mark.parametrize("tail", [b'{"seq": 3', b"not json\n", b'{"seq":8,"prev":"x","hash":"y"}\n'])
def test_reopen_refuses_a_bad_tail(log_path, tail):
    with open(log_path, "ab") as file:
        file.write(tail)
    with pytest.raises(AuditLogError, match="keyrelay audit verify"):
        AuditLog(log_path)


def test_empty_log_verifies(tmp_path):
    path = tmp_path / "empty.jsonl"
    AuditLog(path).close()
    report = verify(path)
    assert report.ok and report.records == 0 and report.head == GENESIS


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("offset", [2, 40, -5, -1], ids=["key", "value", "hash", "newline"])
def test_a_flipped_byte_names_its_line(log_path, place, offset):
    line = PLACES[place]
    lines = _lines(log_path)
    data = bytearray(lines[line - 1])
    data[offset] ^= 0x01
    lines[line - 1] = bytes(data)
    _write(log_path, lines)
    report = verify(log_path)
    assert not report.ok
    assert report.first_bad_line == line and report.records == line - 1
    assert report.problem.startswith(f"line {line}")
    assert ("edited" if offset != -1 or place != "last" else "incomplete") in report.problem


def test_an_edited_field_names_its_seq(log_path):
    lines = _lines(log_path)
    lines[2] = lines[2].replace(b'"tenant":"acme"', b'"tenant":"evil"')
    _write(log_path, lines)
    report = verify(log_path)
    assert (report.first_bad_line, report.first_bad_seq) == (3, 3)
    assert report.problem.startswith("line 3 (seq 3) was edited")


@pytest.mark.parametrize("line", [1, 4])
def test_a_deleted_line_is_named(log_path, line):
    lines = _lines(log_path)
    del lines[line - 1]
    _write(log_path, lines)
    report = verify(log_path)
    assert not report.ok and report.first_bad_line == line and report.first_bad_seq == line + 1
    assert report.problem == (
        f"line {line}: expected seq {line}, found {line + 1}: a record was dropped before it or records were moved"
    )


def test_deleting_the_last_line_shows_only_in_the_count(log_path):
    full = verify(log_path)
    _write(log_path, _lines(log_path)[:-1])
    report = verify(log_path)
    assert report.ok and report.records == COUNT - 1 and report.head != full.head


@pytest.mark.parametrize("line", [1, 4, COUNT - 1])
def test_swapped_lines_are_named(log_path, line):
    lines = _lines(log_path)
    lines[line - 1], lines[line] = lines[line], lines[line - 1]
    _write(log_path, lines)
    report = verify(log_path)
    assert not report.ok and report.first_bad_line == line and report.first_bad_seq == line + 1
    assert f"expected seq {line}, found {line + 1}" in report.problem


def test_a_record_from_another_chain_is_named(log_path, tmp_path):
    other = tmp_path / "other.jsonl"
    with AuditLog(other) as log:
        for i in range(COUNT):
            log.append(_record(100 + i))
    _write(log_path, _lines(log_path)[:3] + _lines(other)[3:])
    report = verify(log_path)
    assert (report.first_bad_line, report.first_bad_seq) == (4, 4)
    assert report.problem == "line 4 (seq 4): does not follow line 3: a record was dropped, inserted or moved"


def test_a_first_line_from_another_chain_is_named(log_path, tmp_path):
    lines = _lines(log_path)
    forged = {**json.loads(lines[0]), "prev": "1" * 64}
    del forged["hash"]
    canonical = json.dumps(forged, sort_keys=True, separators=(",", ":"))
    forged["hash"] = hashlib.sha256(canonical.encode()).hexdigest()
    lines[0] = json.dumps(forged, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    _write(log_path, lines)
    report = verify(log_path)
    assert report.first_bad_line == 1 and "does not start the chain" in report.problem


def test_a_truncated_tail_is_named(log_path):
    data = log_path.read_bytes()
    log_path.write_bytes(data[:-20])
    report = verify(log_path)
    assert not report.ok and report.first_bad_line == COUNT and report.records == COUNT - 1
    assert "incomplete" in report.problem


def test_a_missing_newline_at_the_end_is_named(log_path):
    log_path.write_bytes(log_path.read_bytes()[:-1])
    assert verify(log_path).first_bad_line == COUNT


def _cli(path) -> int:
    parser = argparse.ArgumentParser(prog="keyrelay")
    audit_commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["audit", "verify", str(path)])
    return args.func(args)


def test_cli_reports_an_intact_chain(log_path, capsys):
    assert _cli(log_path) == 0
    assert capsys.readouterr().out == f"{log_path}: {COUNT} records, chain intact, head {verify(log_path).head}\n"


def test_cli_names_the_bad_line(log_path, capsys):
    lines = _lines(log_path)
    del lines[1]
    _write(log_path, lines)
    assert _cli(log_path) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{log_path}: line 2: expected seq 2, found 3") and err.count("\n") == 1


def test_cli_missing_file(tmp_path, capsys):
    assert _cli(tmp_path / "nope.jsonl") == 1
    err = capsys.readouterr().err
    assert "no such file" in err and err.count("\n") == 1
