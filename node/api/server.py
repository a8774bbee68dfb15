"""The HTTP server (uvicorn) in a thread of the supervisor, started and stopped with it."""

from __future__ import annotations

import contextlib
import ssl
import threading
import time

import uvicorn
from fastapi import FastAPI

from node.config import ServerTls

START_SECONDS = 15.0


class ApiServer:
    """Serves the app on host:port until `stop`."""

    def __init__(self, app: FastAPI, host: str, port: int, tls: ServerTls | None = None) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            ssl_certfile=str(tls.certificate) if tls else None,
            ssl_keyfile=str(tls.key) if tls else None,
            ssl_ca_certs=str(tls.ca_certificates) if tls and tls.ca_certificates else None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if tls and tls.ca_certificates else ssl.CERT_NONE,
            log_config=None,  # the node's logging, not uvicorn's
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)
        self.host, self.port = host, port

    def _run(self) -> None:
        with contextlib.suppress(SystemExit):  # uvicorn exits when it cannot bind:
            self.server.run()  # start() reports it

    def start(self) -> None:
        """Start serving; raise OSError when the port cannot be opened."""
        self._thread.start()
        deadline = time.monotonic() + START_SECONDS
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise OSError(
                    f"the HTTP server cannot listen on {self.host}:{self.port}: another "
                    "program uses the port, or the address is not on this machine; change "
                    "api.port or api.host"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        self.server.should_exit = True
        self._thread.join(timeout=10)
