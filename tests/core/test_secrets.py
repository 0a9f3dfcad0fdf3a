"""Secrets never stored or printed: a password in store.url (given on the command line or
through TTC_STORE_URL) reaches neither the store, nor Hydra's output folder, nor an error
line; and a `%` in a store URL is an ordinary character."""

from __future__ import annotations

import json
import os
import secrets
import urllib.parse
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from ttc.store import Store
from ttc.store.secrets import mask_config, mask_url, scrub

from conftest import DOUBLES, subprocess_env, ttc_cli

PG_URL = os.environ.get("TTC_TEST_POSTGRES_URL")


def _files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def _holding(paths: list[Path], needles: list[bytes]) -> list[str]:
    found = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        found += [f"{path} holds {n!r}" for n in needles if n in data]
    return found


def _needles(password: str) -> list[bytes]:
    return sorted({password.encode(), urllib.parse.quote(password, safe="").encode()})


def test_masking_hides_passwords_in_urls_and_secret_keys() -> None:
    assert mask_url("postgresql+psycopg://u:p%40ss@h:5/db") == "postgresql+psycopg://u:***@h:5/db"
    assert mask_url("sqlite:///runs/100%.db") == "sqlite:///runs/100%.db"
    assert scrub("could not connect to postgresql://u:hunter2@h/db (x)") == (
        "could not connect to postgresql://u:***@h/db (x)"
    )
    cfg = {"store": {"url": "postgresql://u:pw@h/db"}, "backend": {"api_key": "sk-1", "n": 2}}
    assert mask_config(cfg) == {
        "store": {"url": "postgresql://u:***@h/db"},
        "backend": {"api_key": "***", "n": 2},
    }


def test_a_percent_in_a_store_url_is_not_interpolated(tmp_path: Path) -> None:
    """Defect 6: Alembic's ConfigParser read `%` as an interpolation and crashed."""
    url = f"sqlite:///{tmp_path / '100%.db'}"
    proc = ttc_cli(["run", *DOUBLES, f"store.url={url}", "task.n_problems=2"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "100%.db").exists()
    listed = ttc_cli(["runs", "list", "--store", url], cwd=tmp_path)
    assert listed.returncode == 0 and "finished" in listed.stdout, listed.stderr


def test_an_unreachable_store_shows_no_password(tmp_path: Path) -> None:
    """Defect 5: the error line and Hydra's .hydra/*.yaml never hold the password."""
    password = "s3cret%2Fpw-" + secrets.token_hex(4)
    url = f"postgresql+psycopg://someone:{password}@127.0.0.1:9/ttc"  # port 9: refused
    proc = ttc_cli(["run", *DOUBLES, f"store.url={url}"], cwd=tmp_path, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "someone:***@127.0.0.1" in proc.stderr
    outputs = _files_under(tmp_path / "runs")
    assert any(p.name == "overrides.yaml" for p in outputs)  # Hydra did write its folder
    found = _holding(outputs, [*_needles(password), b"s3cret"])
    assert not found and password not in proc.stdout + proc.stderr, found


@pytest.mark.postgres
@pytest.mark.skipif(not PG_URL, reason="set TTC_TEST_POSTGRES_URL (bash scripts/postgres.sh)")
@pytest.mark.parametrize("given", ["store.url", "TTC_STORE_URL"])
def test_a_store_password_is_stored_nowhere(tmp_path: Path, given: str) -> None:
    """A role that must give its password (scripts/postgres.sh: ttc_password_login); a run
    on it through store.url or store=postgres + TTC_STORE_URL, then a grep of every table,
    the server's data files and WAL, Hydra's output and what was printed."""
    assert PG_URL
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    role, db = f"ttc_secret_{secrets.token_hex(3)}", f"ttc_secret_{secrets.token_hex(3)}"
    password = f"pw%{secrets.token_hex(6)}@:/"
    with admin.connect() as conn:
        # DDL takes no bound parameters; the password has no quote in it
        conn.execute(
            text(f"CREATE ROLE {role} LOGIN IN ROLE ttc_password_login PASSWORD '{password}'")
        )
        conn.execute(text(f"CREATE DATABASE {db} OWNER {role}"))
        data_dir = Path(conn.execute(text("SHOW data_directory")).scalar_one())
    base = urllib.parse.urlsplit(PG_URL.replace("postgresql+psycopg", "postgresql"))
    host = f"{base.hostname}:{base.port}"
    url = f"postgresql+psycopg://{role}:{urllib.parse.quote(password, safe='')}@{host}/{db}"
    wrong = f"postgresql+psycopg://{role}:wrong@{host}/{db}"
    try:
        with pytest.raises(Exception, match="password authentication failed"):
            create_engine(wrong).connect()  # the password matters

        if given == "store.url":
            args, env = [f"store.url={url}"], subprocess_env()
        else:
            args, env = ["store=postgres"], subprocess_env(TTC_STORE_URL=url)
        proc = ttc_cli(
            ["run", *DOUBLES, *args, "task.n_problems=3", "strategy=beam_search"],
            cwd=tmp_path,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr
        shown = ttc_cli(["runs", "list", "--store", url], cwd=tmp_path)
        (run,) = Store(url).list_runs()
        as_json = ttc_cli(["runs", "show", run["id"], "--json", "--store", url], cwd=tmp_path)
        assert json.loads(as_json.stdout)["config"]["store"]["url"] == mask_url(url)

        needles = _needles(password)
        printed = proc.stdout + proc.stderr + shown.stdout + as_json.stdout
        assert not [n for n in needles if n in printed.encode()]
        engine = create_engine(url)
        with engine.connect() as conn:
            dump = [
                json.dumps([list(r) for r in conn.execute(text(f"SELECT * FROM {t}"))], default=str)
                for t in inspect(conn).get_table_names()
            ]
        engine.dispose()
        assert any(run["id"] in d for d in dump)
        assert not [n for n in needles if any(n in d.encode() for d in dump)]
        hydra = _files_under(tmp_path / "runs")
        assert any(p.name == "config.yaml" for p in hydra)
        assert not _holding(hydra, needles)
        with admin.connect() as conn:
            conn.execute(text("CHECKPOINT"))  # flush everything into the data files
        server_files = _files_under(data_dir)
        assert any("pg_wal" in p.parts for p in server_files)
        assert not _holding(server_files, needles)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            conn.execute(text(f"DROP ROLE IF EXISTS {role}"))
        admin.dispose()
