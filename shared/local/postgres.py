"""A throw-away PostgreSQL server in a temporary folder (tests and benchmarks).

``initdb`` + ``pg_ctl`` from the machine's PostgreSQL install, on a free loopback port, trust
authentication, stopped by PID. PostgreSQL refuses to run as root, so under root the server runs
as the ``postgres`` system user (Debian's package creates it) via ``runuser``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from shared.local.azurite import free_port, port_open


def pg_bindir() -> Path:
    """The folder holding initdb and pg_ctl (PATH, pg_config, or Debian's layout)."""
    initdb = shutil.which("initdb")
    if initdb:
        return Path(os.path.realpath(initdb)).parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if out.returncode == 0 and (Path(out.stdout.strip()) / "initdb").exists():
            return Path(out.stdout.strip())
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if candidates:
        return Path(candidates[-1]).parent
    raise FileNotFoundError(
        "PostgreSQL server binaries not found: install Debian's `postgresql` package "
        "(the test setup script does)"
    )


@dataclass
class PostgresServer:
    datadir: Path
    port: int
    user: str = "postgres"
    durable: bool = False

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create an empty database ``name`` on the server; returns its URL."""
        import sqlalchemy as sa  # the server helper itself needs no driver

        admin = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        finally:
            admin.dispose()
        return self.url(name)

    def pid(self) -> int | None:
        pidfile = self.datadir / "postmaster.pid"
        if not pidfile.exists():
            return None
        return int(pidfile.read_text().split()[0])

    def start(self) -> None:
        """Start the server on its data folder and port (again, after ``stop(remove=False)``)."""
        folder = self.datadir.parent
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {folder}"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        subprocess.run(
            _as_postgres(
                [
                    str(pg_bindir() / "pg_ctl"),
                    "-D",
                    str(self.datadir),
                    "-o",
                    options,
                    "-l",
                    str(folder / "server.log"),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
        )
        deadline = time.monotonic() + 30
        while not port_open(self.port):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"PostgreSQL did not listen on {self.port}; see {folder}/server.log"
                )
            time.sleep(0.1)

    def stop(self, remove: bool = True) -> None:
        self._stop()
        if remove:
            shutil.rmtree(self.datadir.parent, ignore_errors=True)

    def _stop(self) -> None:
        pid = self.pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGINT)  # "fast" shutdown
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


def _as_postgres(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


def start_postgres(
    folder: Path | None = None, port: int | None = None, durable: bool = False
) -> PostgresServer:
    """Init and start a server under ``folder`` (default: a new temporary folder).

    ``durable=False`` turns fsync off, which is what tests want. Under root the folder must be
    reachable by the ``postgres`` user, so pass one whose parents it can traverse, or none.
    """
    bindir = pg_bindir()
    port = port or free_port()
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="scoring-pg-"))
    folder.mkdir(parents=True, exist_ok=True)
    datadir = folder / "data"
    if os.geteuid() == 0:
        pwd.getpwnam("postgres")  # KeyError: Debian's postgresql package is not installed
        shutil.chown(folder, "postgres")
        os.chmod(folder, 0o700)
    subprocess.run(
        _as_postgres(
            [
                str(bindir / "initdb"),
                "-D",
                str(datadir),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-instructions",
            ]
        ),
        check=True,
        capture_output=True,
    )
    server = PostgresServer(datadir, port, durable=durable)
    server.start()
    return server
