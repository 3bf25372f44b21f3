"""The API's transports: HTTP/1.1 with keep-alive on a Unix socket and, optionally, on TCP.

Only moves bytes: parse the head (httpwire), read the body, authenticate (SO_PEERCRED names
the Unix caller; TCP needs the bearer token), call the route, write JSON back.
"""

from __future__ import annotations

import asyncio
import grp
import hmac
import json
import logging
import os
import pwd
import socket
import struct
from pathlib import Path
from typing import Any

from cloudctl.api.base import Answer, App, Request, error_status
from cloudctl.api.openapi import build_openapi
from cloudctl.api.table import match
from cloudctl.config import ApiConfig
from cloudctl.httpwire import (
    MAX_HEAD_BYTES,
    HttpError,
    RequestHead,
    parse_request_head,
    render_response,
)

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024


class ApiStartError(Exception):
    """A listener could not be started; the message says which and why."""


def _json(
    status: int, payload: Any, keep_alive: bool, headers: dict[str, str] | None = None
) -> bytes:
    body = json.dumps(payload, separators=(",", ":")).encode() + b"\n"
    return render_response(status, body, "application/json", keep_alive=keep_alive, headers=headers)


def _unix_actor(writer: asyncio.StreamWriter) -> str:
    sock = writer.get_extra_info("socket")
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
    except OSError:
        return "unix:unknown"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid:{uid}"


class ApiServer:
    def __init__(self, app: App, config: ApiConfig) -> None:
        self.app = app
        self.config = config
        self._servers: list[asyncio.AbstractServer] = []
        self._openapi = json.dumps(build_openapi(), indent=1).encode()
        self._connections: set[asyncio.Task] = set()

    async def start(self) -> None:
        await self._start_unix(self.config.socket)
        if self.config.tcp is not None:
            tcp = self.config.tcp
            try:
                server = await asyncio.start_server(
                    lambda r, w: self._connection(r, w, tcp=True),
                    tcp.host,
                    tcp.port,
                    limit=MAX_HEAD_BYTES,
                )
            except OSError as exc:
                raise ApiStartError(
                    f"cannot listen on {tcp.host}:{tcp.port}: {exc.strerror}"
                ) from None
            self._servers.append(server)
            log.info("API listening on tcp %s:%d (bearer token required)", tcp.host, tcp.port)

    async def _start_unix(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ApiStartError(f"cannot create {path.parent}: {exc.strerror}") from None
        if path.exists() or path.is_symlink():
            if _socket_answers(path):
                raise ApiStartError(f"another cloudctld is already listening on {path}")
            path.unlink()  # a stale socket from a daemon that was killed
        try:
            server = await asyncio.start_unix_server(
                lambda r, w: self._connection(r, w, tcp=False), path, limit=MAX_HEAD_BYTES
            )
            os.chmod(path, self.config.socket_mode)
            if self.config.socket_group:
                os.chown(path, -1, grp.getgrnam(self.config.socket_group).gr_gid)
        except KeyError:
            raise ApiStartError(
                f"api.socket_group: no group {self.config.socket_group!r}"
            ) from None
        except OSError as exc:
            raise ApiStartError(f"cannot listen on {path}: {exc.strerror}") from None
        self._servers.append(server)
        log.info("API listening on %s (mode %o)", path, self.config.socket_mode)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._connections):
            task.cancel()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        if self.config.socket.is_socket():
            self.config.socket.unlink()

    async def _connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, tcp: bool
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        if tcp:
            peer = writer.get_extra_info("peername")
            actor = f"token@{peer[0]}" if peer else "token"
        else:
            actor = _unix_actor(writer)
        try:
            while True:
                try:
                    head_bytes = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    break  # the client closed the connection between requests
                except asyncio.LimitOverrunError:
                    writer.write(_json(431, {"error": "request head too large"}, False))
                    break
                response, keep_alive = await self._respond(head_bytes, reader, actor, tcp)
                writer.write(response)
                await writer.drain()
                if not keep_alive:
                    break
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    async def _respond(
        self, head_bytes: bytes, reader: asyncio.StreamReader, actor: str, tcp: bool
    ) -> tuple[bytes, bool]:
        try:
            head = parse_request_head(head_bytes)
        except HttpError as exc:
            return _json(exc.status, {"error": exc.message}, False), False
        keep_alive = head.keep_alive
        try:
            length = head.content_length(MAX_BODY_BYTES)
            body_bytes = await reader.readexactly(length) if length else b""
            if tcp and not self._token_ok(head):
                headers = {"WWW-Authenticate": 'Bearer realm="cloudctld"'}
                return _json(
                    401, {"error": "a valid bearer token is required"}, keep_alive, headers
                ), keep_alive
            if head.method == "GET" and head.path == "/openapi.json":
                return render_response(
                    200, self._openapi, "application/json", keep_alive=keep_alive
                ), keep_alive
            route, path_params = match(head.method, head.path)
            body = None
            if body_bytes:
                try:
                    body = json.loads(body_bytes)
                except ValueError:
                    raise HttpError(400, "the request body is not valid JSON") from None
            payload = await route.handler(self.app, Request(head, path_params, body, actor))
            if isinstance(payload, Answer):
                return _json(payload.status, payload.body, keep_alive), keep_alive
            return _json(route.status, payload, keep_alive), keep_alive
        except asyncio.IncompleteReadError:
            return b"", False
        except Exception as exc:
            status = error_status(exc)
            if status is None:
                log.exception("API %s %s failed", head.method, head.path)
                status, message = 500, f"internal error: {exc!r}; see the cloudctld log"
            else:
                message = exc.message if isinstance(exc, HttpError) else str(exc)
            return _json(status, {"error": message}, keep_alive), keep_alive

    def _token_ok(self, head: RequestHead) -> bool:
        assert self.config.tcp is not None
        scheme, _, token = head.headers.get("authorization", "").partition(" ")
        expected = self.config.tcp.token.encode()
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected)


def _socket_answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True
