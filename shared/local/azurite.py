"""Starting Azurite, the official Storage emulator, from the project's npm install.

Used by the demo when no storage is configured and by the test fixtures. Two services run, each
its own process: blob (containers) and queue (the run-request queue and its poison queue).
Azurite listens on loopback, keeps its data in the given folder, and is stopped by PID.
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


def connection_string(port: int, queue_port: int | None = None) -> str:
    text = (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};"
    )
    if queue_port is not None:
        text += f"QueueEndpoint=http://127.0.0.1:{queue_port}/{ACCOUNT};"
    return text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def azurite_command(service: str = "blob") -> list[str]:
    name = f"azurite-{service}"
    local = ROOT / "node_modules" / ".bin" / name
    if local.exists():
        return [str(local)]
    found = shutil.which(name)
    if found:
        return [found]
    raise FileNotFoundError(
        f"{name} not found: run `npm ci` in the repository (the setup script does)"
    )


@dataclass
class Azurite:
    """Running Azurite services: blob on ``port`` and, when started, queue on ``queue_port``."""

    processes: list[subprocess.Popen]
    port: int
    location: Path
    queue_port: int | None = None

    @property
    def connection_string(self) -> str:
        return connection_string(self.port, self.queue_port)

    def stop(self) -> None:
        for process in self.processes:
            _stop(process)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def start_azurite(
    location: Path,
    port: int | None = None,
    timeout: float = 30.0,
    queue_port: int | None = None,
    services: tuple[str, ...] = ("blob", "queue"),
) -> Azurite:
    """Start Azurite's ``services`` on loopback with data under ``location``; wait until each
    listens. ``port`` is the blob port, ``queue_port`` the queue port (free ports if not given);
    a service left out of ``services`` is assumed to run already on its port."""
    port = port or free_port()
    queue_port = queue_port or free_port()
    location.mkdir(parents=True, exist_ok=True)
    processes: list[subprocess.Popen] = []
    try:
        for service in services:
            service_port = {"blob": port, "queue": queue_port}[service]
            processes.append(_start(service, service_port, location, timeout))
    except BaseException:
        for process in processes:
            _stop(process)
        raise
    return Azurite(processes, port, location, queue_port)


def _start(service: str, port: int, location: Path, timeout: float) -> subprocess.Popen:
    with open(location / f"azurite-{service}.log", "ab") as log:  # the child keeps its own fd
        process = _spawn(service, port, location, log)
    deadline = time.monotonic() + timeout
    while not port_open(port):
        if process.poll() is not None:
            raise RuntimeError(
                f"Azurite {service} exited with {process.returncode}; see "
                f"{location}/azurite-{service}.log"
            )
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            raise TimeoutError(f"Azurite {service} did not listen on port {port} within {timeout}s")
        time.sleep(0.1)
    return process


def _spawn(service: str, port: int, location: Path, log) -> subprocess.Popen:
    return subprocess.Popen(
        [
            *azurite_command(service),
            f"--{service}Host",
            "127.0.0.1",
            f"--{service}Port",
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
