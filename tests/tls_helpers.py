"""Certificates for TLS tests, made with the openssl command: a CA, a server
certificate for 127.0.0.1 and localhost, and a client certificate, all signed by it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.helpers import require_tool

OPENSSL = "/usr/bin/openssl"


def _run(*args: str, cwd: Path) -> None:
    done = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def make_certificates(folder: Path) -> dict[str, Path]:
    """ca.pem, server.pem/.key and client.pem/.key in `folder`; their paths by name."""
    require_tool(OPENSSL)
    folder.mkdir(parents=True, exist_ok=True)
    _run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
         "-days", "2", "-subj", "/CN=Radnode Test CA", cwd=folder)  # fmt: skip
    for name, san in (("server", "IP:127.0.0.1,DNS:localhost"), ("client", "DNS:radnode-client")):
        (folder / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        _run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder)  # fmt: skip
        _run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
             "-extfile", f"{name}.ext", cwd=folder)  # fmt: skip
    return {
        name: folder / name
        for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")
    }
