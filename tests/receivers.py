"""Real HTTPS receivers on loopback for the alert tests.

* :class:`Receiver` is a webhook endpoint: it records every request (path, headers, body) and
  answers with the status the test sets.
* Started with ``eventgrid=True`` it speaks Event Grid's publish API for CloudEvents topics as
  the service documents it (``POST /api/events?api-version=...`` with
  ``Content-Type: application/cloudevents-batch+json``, a JSON array of CloudEvents 1.0, and an
  ``Authorization: Bearer`` token; 200 on success): no Event Grid emulator exists here, so this
  stand-in checks what the publisher sends at the wire.

Both serve TLS with a self-signed certificate for 127.0.0.1 made here; the test points
``REQUESTS_CA_BUNDLE`` at it, so the app's HTTPS-only clients (requests, azure-core) verify it
as they would a real certificate.
"""

from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import json
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1 (files in ``folder``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    def json(self):
        return json.loads(self.body)


@dataclass
class Receiver:
    cert: Path
    key: Path
    eventgrid: bool = False
    status: int = 200  # what the next requests are answered with
    requests: list[Request] = field(default_factory=list)

    def start(self) -> Receiver:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real receivers offer

            def do_POST(self):  # noqa: N802 - the stdlib's name
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                status = receiver.status
                if receiver.eventgrid:
                    status = receiver.check_publish(self.path, self.headers, body) or status
                receiver.requests.append(
                    Request(
                        self.path, {k.lower(): v for k, v in self.headers.items()}, body, status
                    )
                )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def check_publish(self, path: str, headers, body: bytes) -> int | None:
        """Event Grid's checks of a CloudEvents publish call: 400/401 as the service answers."""
        if not path.startswith("/api/events") or "api-version=" not in path:
            return 404
        if not (headers.get("Authorization") or "").startswith("Bearer "):
            return 401
        if not (headers.get("Content-Type") or "").startswith("application/cloudevents-batch+json"):
            return 400
        try:
            events = json.loads(body)
        except ValueError:
            return 400
        required = ("specversion", "id", "source", "type")
        if not isinstance(events, list) or not all(
            isinstance(e, dict) and all(k in e for k in required) and e["specversion"] == "1.0"
            for e in events
        ):
            return 400
        return None

    def delivered(self) -> list[Request]:
        """Requests answered with a 2xx: what the receiver accepted."""
        return [r for r in self.requests if 200 <= r.status < 300]

    def published_events(self) -> list[dict]:
        return [e for r in self.delivered() for e in r.json()]
