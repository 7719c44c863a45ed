"""The ``wes-gateway`` command in process, on a SQLite store of the test's own (settings from
the environment, as the command reads them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from wes_gateway import store
from wes_gateway.cli import main


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("WES_GATEWAY_CONFIG", "WES_GATEWAY_DATABASE_URL", "WES_GATEWAY_SHARED_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WES_GATEWAY_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def test_db_upgrade_then_it_is_up_to_date(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "upgrade"]) == 0
    assert f"schema at version {store.SCHEMA_VERSION} (applied" in capsys.readouterr().out
    assert main(["db", "upgrade"]) == 0
    assert "(up to date)" in capsys.readouterr().out
    assert (data_dir / "wes.sqlite3").is_file()


def test_commands_refuse_a_store_whose_schema_is_not_current(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir.mkdir(parents=True)
    assert main(["runs", "purge", "--older-than", "30d"]) == 2
    assert "db upgrade" in capsys.readouterr().err
    assert main(["token", "list"]) == 2


def test_a_purge_with_a_bad_age_is_refused(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", "purge", "--older-than", "thirty days"]) == 2
    assert "not a duration" in capsys.readouterr().err


def test_a_purge_of_an_empty_store_says_so(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["db", "upgrade"])
    capsys.readouterr()
    assert main(["runs", "purge", "--older-than", "1d", "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("would purge 0 finished runs")


def test_a_token_is_shown_once_listed_by_id_and_revoked(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["db", "upgrade"])
    capsys.readouterr()
    assert main(["token", "create", "alice", "--label", "laptop"]) == 0
    header, token = capsys.readouterr().out.splitlines()
    assert header.startswith("token ") and "alice" in header
    token_id = int(header.split()[1])
    assert main(["token", "list"]) == 0
    listed = capsys.readouterr().out
    assert f"{token_id}\talice\tlaptop" in listed and "active" in listed and token not in listed
    assert main(["token", "revoke", str(token_id)]) == 0
    assert main(["token", "revoke", str(token_id)]) == 1  # revoked already
    main(["token", "list"])
    assert "revoked" in capsys.readouterr().out


def test_a_subcommand_is_required() -> None:
    with pytest.raises(SystemExit):
        main([])
