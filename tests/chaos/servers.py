"""Private real servers the chaos suite may break: a PostgreSQL cluster and a redis-server.

The shared PostgreSQL (5432) and Redis (6379) serve every helper at once and are never touched:
anything that pauses, kills or restarts a server does it to one of these.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

import asyncpg

from tests.support.services import PrivateRedis, free_port

PG_BIN = os.environ.get("DC_TEST_PG_BIN", "/usr/lib/postgresql/15/bin")


class RestartableRedis(PrivateRedis):
    """``PrivateRedis`` plus :meth:`restart` on the same port (an empty server comes back)."""

    def restart(self, down_s: float = 0.0, *, keep_data: bool = False) -> None:
        """Stop and start again on the same port.

        ``keep_data=False`` kills the server (a crash: it comes back empty); ``keep_data=True`` is
        a planned restart (``SHUTDOWN SAVE``, then the RDB file is loaded on start).
        """
        if keep_data and self.running:
            import socket

            # A raw command: redis-py would retry the connection the server closes as it exits.
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                sock.sendall(b"SHUTDOWN SAVE\r\n")
                try:
                    sock.recv(64)
                except OSError:
                    pass
            self.proc.wait(timeout=30)
        self.stop()
        if down_s:
            time.sleep(down_s)
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class PrivatePostgres:
    """A PostgreSQL 15 cluster of our own (initdb as user ``postgres`` in a temporary directory).

    ``dsn`` is for asyncpg, ``url`` for the project's config. Start, stop, restart and kill it at
    will; :meth:`destroy` stops it and removes its files.
    """

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="dc-chaos-pg-")
        self.data = os.path.join(self.root, "data")
        self.log = os.path.join(self.root, "server.log")
        self.port = free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"
        self.restarts = 0
        shutil.chown(self.root, user="postgres", group="postgres")

    def _as_postgres(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["runuser", "-u", "postgres", "--", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def initdb(self) -> None:
        out = self._as_postgres(
            f"{PG_BIN}/initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"
        )
        if out.returncode != 0:
            raise RuntimeError(f"initdb failed: {out.stderr.strip()}")

    def start(self) -> None:
        opts = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        out = self._as_postgres(
            f"{PG_BIN}/pg_ctl", "-D", self.data, "-o", opts, "-l", self.log, "-w", "-t", "60", "start"
        )
        if out.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {out.stderr.strip() or out.stdout.strip()}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster (``fast``: rolls back and disconnects; ``immediate``: like a crash)."""
        if self.running:
            self._as_postgres(f"{PG_BIN}/pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str = "fast", down_s: float = 0.0) -> None:
        self.stop(mode)
        if down_s:
            time.sleep(down_s)
        self.start()
        self.restarts += 1

    @property
    def running(self) -> bool:
        out = self._as_postgres(f"{PG_BIN}/pg_ctl", "-D", self.data, "status")
        return out.returncode == 0

    def ensure_running(self) -> None:
        if not self.running:
            self.start()

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    async def connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.dsn, timeout=10)

    async def terminate_backends(self, *, query_like: str | None = None) -> int:
        """``pg_terminate_backend`` every other client backend (optionally only those whose current
        query matches the SQL LIKE pattern ``query_like``); returns how many were terminated."""
        conn = await self.connect()
        try:
            sql = (
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND backend_type = 'client backend' "
                "AND ($1::text IS NULL OR query LIKE $1)"
            )
            return int(await conn.fetchval(sql, query_like))
        finally:
            await conn.close()

    async def backends(self) -> list[dict[str, object]]:
        conn = await self.connect()
        try:
            rows = await conn.fetch(
                "SELECT pid, state, query FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"
            )
            return [dict(r) for r in rows]
        finally:
            await conn.close()
