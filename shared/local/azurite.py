"""Starting Azurite, the official Blob Storage emulator, from the project's npm install.

Used by the demo when no storage is configured and by the test fixtures. Azurite listens on
loopback, keeps its data in the given folder, and is stopped by PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def connection_string(port: int) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def azurite_command() -> list[str]:
    local = ROOT / "node_modules" / ".bin" / "azurite-blob"
    if local.exists():
        return [str(local)]
    found = shutil.which("azurite-blob")
    if found:
        return [found]
    raise FileNotFoundError(
        "azurite-blob not found: run `npm ci` in the repository (the setup script does)"
    )


@dataclass
class Azurite:
    """A running Azurite blob service."""

    process: subprocess.Popen
    port: int
    location: Path

    @property
    def connection_string(self) -> str:
        return connection_string(self.port)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start_azurite(location: Path, port: int | None = None, timeout: float = 30.0) -> Azurite:
    """Start ``azurite-blob`` on loopback with data under ``location``; wait until it listens."""
    port = port or free_port()
    location.mkdir(parents=True, exist_ok=True)
    with open(location / "azurite.log", "ab") as log:  # the child keeps its own descriptor
        process = _spawn(port, location, log)
    deadline = time.monotonic() + timeout
    while not port_open(port):
        if process.poll() is not None:
            raise RuntimeError(
                f"Azurite exited with {process.returncode}; see {location}/azurite.log"
            )
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            raise TimeoutError(f"Azurite did not listen on port {port} within {timeout}s")
        time.sleep(0.1)
    return Azurite(process, port, location)


def _spawn(port: int, location: Path, log) -> subprocess.Popen:
    return subprocess.Popen(
        [
            *azurite_command(),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--location",
            str(location),
            "--skipApiVersionCheck",
            "--disableTelemetry",
            "--loose",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so stop() ends node and children
    )
