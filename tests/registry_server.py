"""A real OCI registry on loopback for the registry tests: Debian's ``docker-registry`` (the distribution
registry 2.x), in two configurations, with images pushed by ``skopeo``.

- ``basic``: htpasswd Basic auth over TLS, with a CA and a server certificate for 127.0.0.1 made here;
- ``token``: token auth over plain http, with :class:`TokenService` (a small http.server in the tests)
  issuing RS256 JWTs signed by a key whose self-signed certificate is the registry's rootcertbundle.

The registry's access log (Apache combined format, on its stdout) tells which requests were made.
Nothing is mocked: rafs talks to the registry as it would to any other.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

USER = "rafs-user"
PASSWORD = "S3cret-pa55word-rafs"          # must never show up in output, logs, errors or reprs
SERVICE = "rafs-test-registry"
ISSUER = "rafs-test-issuer"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def available() -> str | None:
    """Why the registry tests cannot run here, or None."""
    for tool in ("docker-registry", "skopeo", "htpasswd"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup.sh installs it)"
    return None


def _key_and_cert(name: str, *, issuer=None, ca: bool = False, ip: str | None = None):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID
    import ipaddress
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = (issuer[1].subject, issuer[0]) if issuer else (subject, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ip:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                                        critical=False)
    return key, builder.sign(issuer_key, hashes.SHA256())


def _pem(key=None, cert=None) -> bytes:
    from cryptography.hazmat.primitives import serialization
    if key is not None:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenService:
    """``GET /token?service=&scope=`` with Basic credentials: a JWT the registry verifies.

    ``lifetime`` is how long the registry accepts a token (it allows 60 s of leeway, which is taken off
    here); ``expires_in`` what the answer tells the client. ``issued`` counts tokens given out.
    """

    def __init__(self, directory: str):
        from cryptography.hazmat.primitives import serialization
        self.key, self.cert = _key_and_cert("rafs-token-signer")
        self.bundle = os.path.join(directory, "token-root.pem")
        with open(self.bundle, "wb") as f:
            f.write(_pem(cert=self.cert))
        self.x5c = base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()
        self.lifetime = 300
        self.expires_in = 300
        self.issued = 0
        self.refused = 0
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                service.answer(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, handler) -> None:
        query = parse_qs(urlsplit(handler.path).query)
        header = handler.headers.get("Authorization") or ""
        user = None
        if header.startswith("Basic "):
            name, _, password = base64.b64decode(header[6:]).decode().partition(":")
            if (name, password) != (USER, PASSWORD):
                self.refused += 1
                handler.send_response(401)
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
            user = name
        access = []
        for scope in query.get("scope", []):
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            # anonymous users may pull nothing: the repositories here are private
            granted = [a for a in actions.split(",") if user and a in ("pull", "push")]
            access.append({"type": kind, "name": name, "actions": granted})
        self.issued += 1
        handler.send_response(200)
        body = json.dumps({"token": self.token(user or "", access), "expires_in": self.expires_in}).encode()
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def token(self, subject: str, access: list) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        claims = {"iss": ISSUER, "sub": subject, "aud": SERVICE, "iat": now, "nbf": now - 10,
                  "exp": now + self.lifetime - 60, "jti": uuid.uuid4().hex, "access": access}
        signing = _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        signature = self.key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing + "." + _b64url(signature)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Registry:
    """``docker-registry serve`` on 127.0.0.1:<free port> with ``mode`` ``basic`` (TLS + htpasswd) or
    ``token`` (plain http + :class:`TokenService`)."""

    def __init__(self, directory: str, mode: str):
        self.directory, self.mode = directory, mode
        os.makedirs(directory, exist_ok=True)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.token_service = None
        http_section = f"  addr: 127.0.0.1:{self.port}\n"
        if mode == "basic":
            ca_key, ca_cert = _key_and_cert("rafs test CA", ca=True)
            key, cert = _key_and_cert("127.0.0.1", issuer=(ca_key, ca_cert), ip="127.0.0.1")
            self.ca_file = os.path.join(directory, "ca.pem")
            self.cert_dir = os.path.join(directory, "certs")       # for skopeo --dest-cert-dir
            os.makedirs(self.cert_dir)
            for path, data in ((self.ca_file, _pem(cert=ca_cert)), (os.path.join(self.cert_dir, "ca.crt"),
                                                                    _pem(cert=ca_cert)),
                               (os.path.join(directory, "server.pem"), _pem(cert=cert)),
                               (os.path.join(directory, "server.key"), _pem(key=key))):
                with open(path, "wb") as f:
                    f.write(data)
            htpasswd = subprocess.run(["htpasswd", "-nbB", USER, PASSWORD], check=True, capture_output=True).stdout
            with open(os.path.join(directory, "htpasswd"), "wb") as f:
                f.write(htpasswd)
            http_section += (f"  tls:\n    certificate: {directory}/server.pem\n    key: {directory}/server.key\n")
            auth = f"auth:\n  htpasswd:\n    realm: rafs-realm\n    path: {directory}/htpasswd\n"
        else:
            self.ca_file = self.cert_dir = None
            self.token_service = TokenService(directory)
            auth = (f"auth:\n  token:\n    realm: {self.token_service.url}\n    service: {SERVICE}\n"
                    f"    issuer: {ISSUER}\n    rootcertbundle: {self.token_service.bundle}\n")
        config = os.path.join(directory, "config.yml")
        with open(config, "w") as f:
            f.write(f"version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: false\n"
                    f"storage:\n  filesystem:\n    rootdirectory: {directory}/storage\n"
                    f"http:\n{http_section}{auth}")
        self.log_path = os.path.join(directory, "access.log")
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(["docker-registry", "serve", config], stdout=self._log,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"docker-registry exited: {open(self.log_path).read()[-2000:]}")
                time.sleep(0.1)
        else:
            raise RuntimeError("docker-registry did not start listening")

    @property
    def scheme(self) -> str:
        return "https" if self.mode == "basic" else "http"

    def push(self, layout: str, repo_tag: str, *, all_images: bool = False) -> None:
        """``skopeo copy oci:LAYOUT docker://HOST/REPO:TAG`` with the test credentials."""
        command = ["skopeo", "--insecure-policy", "copy", "--quiet", "--dest-creds", f"{USER}:{PASSWORD}"]
        if all_images:
            command.append("--all")
        if self.cert_dir:
            command += ["--dest-cert-dir", self.cert_dir]
        else:
            command.append("--dest-tls-verify=false")
        subprocess.run(command + [f"oci:{layout}", f"docker://{self.host}/{repo_tag}"], check=True,
                       capture_output=True, timeout=120)

    def log_mark(self) -> int:
        self._log.flush()
        return os.path.getsize(self.log_path)

    def requests_since(self, mark: int) -> list[tuple[str, str, int, int]]:
        """(method, path, status, body bytes) of each request the access log shows after ``mark``."""
        time.sleep(0.2)                          # the registry writes its log line after answering
        with open(self.log_path, "rb") as f:
            f.seek(mark)
            text = f.read().decode("utf-8", "replace")
        return [(m.group(1), m.group(2), int(m.group(3)), int(m.group(4)) if m.group(4).isdigit() else 0)
                for m in re.finditer(r'"([A-Z]+) (\S+) HTTP/[0-9.]+" (\d{3}) (\S+)', text)]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()
        if self.token_service:
            self.token_service.stop()
