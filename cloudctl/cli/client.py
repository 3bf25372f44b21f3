"""The CLI's only way to the daemon: JSON over HTTP on the Unix socket or TCP with a token."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any
from urllib.parse import urlencode, urlsplit


class CliError(Exception):
    """Something the operator must fix; printed as one line, exit status 1."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class ApiClient:
    def __init__(self, where: str, *, token: str | None = None, timeout: float = 30.0) -> None:
        """`where` is a Unix socket path, or an http://HOST:PORT URL (then a token is needed)."""
        self.where = where
        self.token = token
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.where.startswith("http://"):
                split = urlsplit(self.where)
                self._conn = http.client.HTTPConnection(
                    split.hostname or "localhost", split.port or 80, timeout=self.timeout
                )
            else:
                self._conn = _UnixConnection(self.where, self.timeout)
        return self._conn

    def request(
        self, method: str, path: str, body: dict | None = None, query: dict | None = None
    ) -> Any:
        if query:
            path += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        headers = {"Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        conn = self._connection()
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            self._conn = None
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise CliError(
                f"cannot reach cloudctld at {self.where}: {reason} (is cloudctld running?)"
            ) from None
        try:
            decoded = json.loads(data) if data else None
        except ValueError:
            raise CliError(
                f"cloudctld sent a reply that is not JSON (HTTP {response.status})"
            ) from None
        if response.status >= 400:
            message = decoded.get("error") if isinstance(decoded, dict) else None
            raise CliError(message or f"cloudctld answered HTTP {response.status}")
        return decoded

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
