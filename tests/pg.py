"""A real PostgreSQL server for the tests: Debian's ``postgresql`` binaries, a throw-away cluster.

``initdb`` + ``pg_ctl`` in a temporary directory, listening on a free port on 127.0.0.1 (its
unix socket in the same directory), a superuser with a password (so the tests see that no
password reaches an error or a log), one fresh database per test (``CREATE DATABASE``), and
the cluster stopped and removed at the end of the session. PostgreSQL refuses to run as root:
when the tests run as root the server runs as the ``postgres`` user (``nobody`` if there is
none) through ``runuser``.

``scripts/setup.sh`` installs the ``postgresql`` package where ``initdb`` is missing.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

SEARCH = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)  # newest version first
USER = "postgres"


def pg_bin(name: str) -> str:
    """A PostgreSQL program: from /usr/lib/postgresql/<version>/bin, else from PATH."""
    for d in SEARCH:
        if (d / name).exists():
            return str(d / name)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(
            f"PostgreSQL's {name} is not installed: run scripts/setup.sh (installs Debian's postgresql package) "
            "or apt-get install postgresql"
        )
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresCluster:
    """A throw-away PostgreSQL cluster (see the module docstring)."""

    def __init__(self, *, durable: bool = False) -> None:
        """``durable``: fsync and synchronous commit on, as a deployment runs (off by default:
        the tests need no crash safety and run faster without)."""
        self.durable = durable
        self.base = Path(tempfile.mkdtemp(prefix="voicecore-pg-"))
        self.data = self.base / "data"
        self.port = free_port()
        self.password = "pg-" + secrets.token_hex(12)
        self.run_as: str | None = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    entry = pwd.getpwnam(name)
                except KeyError:
                    continue
                self.run_as = name
                os.chown(self.base, entry.pw_uid, entry.pw_gid)
                break
            else:
                raise RuntimeError("running as root and there is no postgres or nobody user to run PostgreSQL as")
        os.chmod(self.base, 0o700)

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", self.run_as, "--", *args] if self.run_as else list(args)

    def _run(self, *args: str) -> None:
        res = subprocess.run(self._cmd(*args), capture_output=True, text=True, timeout=120, cwd=self.base)
        if res.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed ({res.returncode}): {res.stderr.strip() or res.stdout.strip()}")

    def start(self) -> PostgresCluster:
        pwfile = self.base / "pw"
        pwfile.write_text(self.password + "\n")
        if self.run_as:
            entry = pwd.getpwnam(self.run_as)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        os.chmod(pwfile, 0o600)
        self._run(pg_bin("initdb"), "-D", str(self.data), "-U", USER, "-E", "UTF8", "--locale=C",
                  "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "--no-sync")  # fmt: skip
        pwfile.unlink()
        self._start_server()
        return self

    def _start_server(self) -> None:
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off"
        # -l: the server's output goes to a file (not to pg_ctl's pipes, which would never close)
        self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.base / "server.log"),
                  "-w", "-t", "60", "start")  # fmt: skip

    def restart(self) -> None:
        """Stop (fast: open connections are cut) and start again with the same options."""
        self.stop_server()
        self._start_server()

    def stop_server(self) -> None:
        """Stop the server (fast: open connections are cut), keeping the cluster: :meth:`start_server` brings it back."""
        self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def start_server(self) -> None:
        self._start_server()

    def stop(self) -> None:
        try:
            self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def url(self, database: str = "postgres", *, password: str | None = None) -> str:
        pw = self.password if password is None else password
        return f"postgresql://{USER}:{pw}@127.0.0.1:{self.port}/{database}"

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.url().replace("postgresql://", "postgresql://", 1), autocommit=True)

    def create_database(self, prefix: str = "t") -> str:
        name = f"{prefix}_{secrets.token_hex(6)}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def checkpoint(self) -> None:
        with self.admin() as conn:
            conn.execute("CHECKPOINT")

    def files(self) -> Iterator[Path]:
        """Every file of the cluster's data directory (heap, indexes, WAL, everything)."""
        for p in self.data.rglob("*"):
            if p.is_file():
                yield p


def wait_until_ready(cluster: PostgresCluster, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with cluster.admin() as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


#: The session's cluster, once the ``pg_cluster`` fixture started it.
CURRENT: PostgresCluster | None = None


def database_files(store, *, wal: bool = True) -> list[Path]:  # type: ignore[no-untyped-def]
    """The files the store's database keeps on disk: the SQLite file with its -wal and -shm, or
    (after a CHECKPOINT) every file of the PostgreSQL cluster's data directory — without its
    write-ahead log (``pg_wal``) when ``wal`` is false: PostgreSQL keeps the bytes of deleted
    rows in WAL segments until they are recycled and overwritten."""
    if store.db.is_sqlite:
        return list(store.files())
    assert CURRENT is not None, "the pg_cluster fixture is not running"
    CURRENT.checkpoint()
    return [p for p in CURRENT.files() if wal or "pg_wal" not in p.parts]


def stored_bytes(store) -> bytes:  # type: ignore[no-untyped-def]
    """Every byte of :func:`database_files` (WAL included). A file the server removes between the
    listing and the read (``pg_internal.init`` is rewritten at any time) held no data of ours."""
    out = []
    for p in database_files(store):
        try:
            out.append(p.read_bytes())
        except FileNotFoundError:
            continue
    return b"".join(out)


class RawConnection:
    """A second, plain connection to the store's database, outside voicecore (what someone with
    access to the file or the server could do): ``?`` placeholders on both databases."""

    def __init__(self, store) -> None:  # type: ignore[no-untyped-def]
        import sqlite3

        self._pg = not store.db.is_sqlite
        if self._pg:
            url = store.db.url.set(drivername="postgresql").render_as_string(hide_password=False)
            self._conn = psycopg.connect(url, autocommit=True)
        else:
            self._conn = sqlite3.connect(store.db_path, isolation_level=None)

    def execute(self, sql: str, params: tuple = ()):  # type: ignore[no-untyped-def]
        return self._conn.execute(sql.replace("?", "%s") if self._pg else sql, params)

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self._conn.close()
