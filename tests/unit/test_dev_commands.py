"""`keyrelay dev` refusals that need no daemon: missing SoftHSM, a foreign directory, no cluster."""

from __future__ import annotations

import pytest

from client_sdk.cli import main
from kms_node import devsetup


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_up_without_softhsm_names_the_package_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(devsetup, "SOFTHSM_MODULE_CANDIDATES", (str(tmp_path / "no" / "libsofthsm2.so"),))
    status, out, err = _run(capsys, "dev", "up", "--state-dir", str(tmp_path / "state"))
    assert status == 1 and out == ""
    assert err.strip() == "keyrelay: SoftHSM2 is not installed: run `sudo apt-get install softhsm2` (or `make setup`)"
    assert not (tmp_path / "state" / "dev-state.json").exists()


def test_up_refuses_a_directory_that_is_not_a_dev_cluster(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(devsetup, "softhsm_module", lambda: "/usr/lib/softhsm/libsofthsm2.so")
    (tmp_path / "notes.txt").write_text("mine")
    status, _, err = _run(capsys, "dev", "up", "--state-dir", str(tmp_path))
    assert status == 1
    assert "is not empty and holds no keyrelay dev cluster" in err and "--state-dir" in err
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("command", ["status", "down"])
def test_status_and_down_without_a_cluster(tmp_path, capsys, command):
    status, out, err = _run(capsys, "dev", command, "--state-dir", str(tmp_path / "none"))
    if command == "status":
        assert status == 1 and "no dev cluster in" in err and "keyrelay dev up" in err
    else:
        assert status == 0 and "no dev cluster is running" in out
    assert not (tmp_path / "none").exists()


def test_port_base_out_of_range_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["dev", "up", "--state-dir", str(tmp_path), "--port-base", "65530"])
    assert exit_info.value.code == 2
    assert "--port-base" in capsys.readouterr().err


@pytest.mark.parametrize(
    "options,message",
    [
        (["--replicas", "2"], "--replicas 2 needs --postgres DSN"),
        (["--postgres", "mysql://root:hunter2@db/keyrelay"], "is not a PostgreSQL DSN"),
    ],
)
def test_replicas_need_postgres_and_a_postgres_dsn(tmp_path, capsys, monkeypatch, options, message):
    monkeypatch.setattr(devsetup, "softhsm_module", lambda: "/usr/lib/softhsm/libsofthsm2.so")
    status, _, err = _run(capsys, "dev", "up", "--state-dir", str(tmp_path / "state"), *options)
    assert status == 1 and message in err, err
    assert "hunter2" not in err
    assert not (tmp_path / "state" / "dev-state.json").exists()
