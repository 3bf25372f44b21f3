"""cloudctld's HTTP boot server: GET and HEAD of boot files for iPXE and UEFI HTTP boot.

Only moves bytes: httpwire parses and renders heads, BootFiles says what a name is (rendered
for the asking node, or on disk, sent with zero-copy sendfile); counters say what became of it.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import BinaryIO

from cloudctl.httpwire import (
    MAX_HEAD_BYTES,
    HttpError,
    RequestHead,
    parse_byte_range,
    parse_request_head,
    render_head,
)
from cloudctl.pxe.bootfiles import BootFile, BootFileError, BootFiles, DiskFile, Refusal

log = logging.getLogger(__name__)

IDLE_TIMEOUT = 15.0  # seconds for a whole request head, on a new or a kept-alive connection
SEND_TIMEOUT = 30.0  # seconds a client may take to accept one SEND_CHUNK before it is dropped
# 4 MiB per timeout drops only clients slower than ~140 kB/s (a boot storm on 1GbE leaves each
# of 256 clients ~500 kB/s); 1 MiB calls cost ~40% of loopback throughput in per-call overhead.
SEND_CHUNK = 4 << 20
READ_CHUNK = 256 << 10  # rendered files and small disk files go out through the write buffer
SMALL_FILE = 64 << 10  # at or below this a body goes out in one write with its head
MAX_CONNECTIONS = 256
LISTEN_BACKLOG = 1024  # a rack powered on at once connects within the same second
LINGER_TIMEOUT = 1.0

# Served as text so a person (or curl) looking at them sees a script; everything else is binary.
_TEXT_SUFFIXES = (".ipxe", ".cfg", ".conf", ".txt")
_TEXT_DIRECTORIES = ("/pxelinux.cfg/",)

MacLookup = Callable[[str], str | None]


class HttpBootError(Exception):
    """The HTTP boot server could not start; the message says where and why."""


@dataclass(frozen=True)
class FileReply:
    """What to answer a GET or HEAD of a file of `size` bytes: the body is bytes [start, stop)."""

    status: int  # 200, 206 or 416
    headers: dict[str, str]
    start: int
    stop: int

    @property
    def length(self) -> int:
        return self.stop - self.start


def content_type(name: str) -> str:
    if name.endswith(_TEXT_SUFFIXES) or any(d in f"/{name}" for d in _TEXT_DIRECTORIES):
        return "text/plain"
    return "application/octet-stream"


def plan_file_reply(head: RequestHead, name: str, size: int, *, rendered: bool) -> FileReply:
    """Status, headers and byte span for a file that exists; decides ranges, does no I/O.

    Only GET takes a Range (RFC 9110 14.2), and only a single one: a multi-range request gets
    the whole file with 200, as RFC 9110 allows (no multipart/byteranges). We send no validators,
    so an If-Range can never match and its Range gets the whole file too, as it must.
    """
    headers = {"Content-Type": content_type(name), "Accept-Ranges": "bytes"}
    if rendered:
        # A node's script changes with its inventory record; nothing should keep an old one.
        headers["Cache-Control"] = "no-store"
    value = head.headers.get("range")
    if head.method != "GET" or value is None or "if-range" in head.headers:
        return FileReply(200, headers, 0, size)
    try:
        span = parse_byte_range(value, size)
    except HttpError:
        headers["Content-Range"] = f"bytes */{size}"
        return FileReply(416, headers, 0, 0)
    if span is None:
        return FileReply(200, headers, 0, size)
    start, stop = span
    headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    return FileReply(206, headers, start, stop)


def refused_name(name: str) -> int | None:
    """The status for a name refused before any lookup, so a renderer never sees such a name."""
    if any(ord(c) < 0x20 or c == "\x7f" for c in name):  # NUL, CR/LF from %00, %0d%0a...
        return 400
    if ".." in name.replace("\\", "/").split("/"):
        return 403
    return None


def error_response(
    status: int, *, keep_alive: bool, head_only: bool = False, headers: dict[str, str] | None = None
) -> bytes:
    body = f"{status} {HTTPStatus(status).phrase}\n".encode()
    all_headers = {"Content-Type": "text/plain", **(headers or {})}
    head = render_head(status, all_headers, content_length=len(body), keep_alive=keep_alive)
    return head if head_only else head + body


# Counter keys for each status a file request can end with.
_STATUS_COUNTER = {
    200: "ok",
    206: "partial",
    400: "bad_request",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    416: "range_not_satisfiable",
    500: "errors",
}


class _Truncated(Exception):
    """The file ended before the Content-Length we promised; closing early tells the client."""


@dataclass
class _Progress:
    sent: int = 0  # body bytes handed to the kernel so far


class HttpBootServer:
    """Serves BootFiles over HTTP/1.1 with keep-alive, pipelining and single byte ranges.

    GET and HEAD only (405 otherwise); a multi-range request gets the whole file with 200.
    `port` is the configured port; `address` is what was bound (port 0: the OS picks).
    BootFiles.open, the renderer and `mac_lookup` run on the event loop: they must be quick.

    Logging: one INFO line per request that names a file, whatever its status (an operator
    chasing a node that will not boot needs its 404s as much as its 200s); requests refused
    before naming a file (malformed heads, other methods, over the connection cap) are DEBUG
    lines, since anyone can send them without bound, and are counted in `counters`.
    """

    def __init__(
        self,
        files: BootFiles,
        *,
        host: str = "0.0.0.0",
        port: int = 8080,
        mac_lookup: MacLookup | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
        send_timeout: float = SEND_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.files = files
        self.host = host
        self.port = port
        self.mac_lookup = mac_lookup
        self.idle_timeout = idle_timeout
        self.send_timeout = send_timeout
        self.max_connections = max_connections
        # requests, ok, partial, not_found, forbidden, bad_request, method_not_allowed,
        # range_not_satisfiable, errors, bytes_sent (bodies only; short by up to a SEND_CHUNK
        # for a transfer cut by the send timeout), connections, rejected (over the cap),
        # timeouts (idle or stalled), aborted (transfers cut short).
        self.counters: collections.Counter[str] = collections.Counter()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._active = 0

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) as bound: with port 0 the port the OS picked."""
        assert self._server is not None, "start() first"
        return self._server.sockets[0].getsockname()[:2]

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(
                self._connection,
                self.host,
                self.port,
                limit=MAX_HEAD_BYTES,
                backlog=LISTEN_BACKLOG,
            )
        except OSError as exc:
            hint = " (is another web server using it?)" if exc.errno == errno.EADDRINUSE else ""
            raise HttpBootError(
                f"cannot listen for HTTP boot on {self.host}:{self.port}: {exc.strerror}{hint}"
            ) from None
        log.info("HTTP boot listening on %s:%d", *self.address)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = writer.get_extra_info("peername")
        client_ip = _client_ip(peer)
        if self._active >= self.max_connections:
            self.counters["rejected"] += 1
            log.debug("HTTP %s: over %d connections, 503", client_ip, self.max_connections)
            writer.write(error_response(503, keep_alive=False, headers={"Retry-After": "1"}))
            try:
                await self._linger(reader, writer)
            finally:
                self._tasks.discard(task)
            return
        self._active += 1
        self.counters["connections"] += 1
        abort = linger = False
        try:
            while True:
                try:
                    async with asyncio.timeout(self.idle_timeout):
                        raw = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    break  # the client closed, between requests or in the middle of a head
                except asyncio.LimitOverrunError:
                    self.counters["requests"] += 1
                    self.counters["bad_request"] += 1
                    log.debug("HTTP %s: request head over %d bytes, 431", client_ip, MAX_HEAD_BYTES)
                    writer.write(error_response(431, keep_alive=False))
                    linger = True
                    break
                except TimeoutError:
                    self.counters["timeouts"] += 1
                    abort = True
                    break
                self.counters["requests"] += 1
                try:
                    # RFC 9112 2.2: ignore blank lines a client sends before a request line.
                    head = parse_request_head(raw.lstrip(b"\r\n"))
                except HttpError as exc:
                    self.counters["bad_request"] += 1
                    log.debug("HTTP %s: %s, %d", client_ip, exc.message, exc.status)
                    writer.write(error_response(exc.status, keep_alive=False))
                    linger = True
                    break
                keep_alive = await self._serve(head, client_ip, writer)
                if not keep_alive:
                    # We close a connection the client meant to keep when it sent a body we did
                    # not read: read it away first, or closing resets and loses our answer.
                    linger = head.keep_alive
                    break
        except TimeoutError:
            self.counters["timeouts"] += 1  # the client stopped reading mid-transfer
            abort = True
        except (_Truncated, OSError, RuntimeError):
            # A transfer could not finish (client gone, file shrank, transport closing): the
            # head promised more bytes, so the connection cannot carry another response.
            abort = True
        except asyncio.CancelledError:
            abort = True  # close() is shutting us down
        except Exception:
            self.counters["errors"] += 1
            log.exception("HTTP %s: connection failed", client_ip)
            abort = True
        finally:
            self._active -= 1
            try:
                if abort:
                    writer.transport.abort()
                elif linger:
                    await self._linger(reader, writer)
                else:
                    writer.close()
            finally:
                self._tasks.discard(task)

    async def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Send what is queued and a FIN, then read away what the client still sends for a while.

        Closing with unread bytes makes the kernel send a reset, which can destroy our answer
        (a 400, 431 or 503 sent mid-request) before the client has read it.
        """
        try:
            if writer.can_write_eof():
                writer.write_eof()
            async with asyncio.timeout(LINGER_TIMEOUT):
                while await reader.read(READ_CHUNK):
                    pass
        except (TimeoutError, ConnectionError, OSError, RuntimeError, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()  # everything was sent or has been given up on

    async def _serve(self, head: RequestHead, client_ip: str, writer: asyncio.StreamWriter) -> bool:
        """Answer one parsed request; returns whether the connection stays open."""
        started = time.monotonic()
        # We never read request bodies, so after one the next request cannot be found.
        has_body = "transfer-encoding" in head.headers or head.headers.get(
            "content-length", "0"
        ).strip() not in ("", "0")
        keep_alive = head.keep_alive and not has_body
        if head.method not in ("GET", "HEAD"):
            self.counters["method_not_allowed"] += 1
            log.debug("HTTP %s %s %s: 405", client_ip, head.method, _printable(head.path))
            reply = error_response(405, keep_alive=keep_alive, headers={"Allow": "GET, HEAD"})
            await self._write(writer, reply)
            return keep_alive
        head_only = head.method == "HEAD"
        name = head.path.lstrip("/")
        status = refused_name(head.path)
        file: BootFile | None = None
        if status is None:
            try:
                mac = self.mac_lookup(client_ip) if self.mac_lookup is not None else None
                file = self.files.open(head.path, mac=mac, client_ip=client_ip)
            except BootFileError as exc:
                status = 403 if exc.refusal is Refusal.ACCESS else 404
                log.debug("HTTP %s %s: %s", client_ip, _printable(head.path), exc)
            except OSError as exc:
                status = _os_error_status(exc)
                log.warning("HTTP %s %s: cannot open: %s", client_ip, _printable(head.path), exc)
            except Exception:
                status = 500
                log.exception(
                    "HTTP %s %s: rendering or MAC lookup failed", client_ip, _printable(head.path)
                )
        if file is None:
            assert status is not None
            self.counters[_STATUS_COUNTER[status]] += 1
            await self._write(
                writer, error_response(status, keep_alive=keep_alive, head_only=head_only)
            )
            _log_request(client_ip, head, status, 0, started)
            return keep_alive
        reply = plan_file_reply(head, name, file.size, rendered=not isinstance(file, DiskFile))
        self.counters[_STATUS_COUNTER[reply.status]] += 1
        response_head = render_head(
            reply.status, reply.headers, content_length=reply.length, keep_alive=keep_alive
        )
        progress = _Progress()
        try:
            if head_only or reply.length == 0:
                await self._write(writer, response_head)
            else:
                await self._send_body(writer, file, response_head, reply, progress)
        except BaseException:
            self.counters["aborted"] += 1
            _log_request(client_ip, head, reply.status, progress.sent, started, aborted=True)
            raise
        finally:
            file.close()
        _log_request(client_ip, head, reply.status, progress.sent, started)
        return keep_alive

    async def _write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        async with asyncio.timeout(self.send_timeout):
            await writer.drain()

    async def _send_body(
        self,
        writer: asyncio.StreamWriter,
        file: BootFile,
        head: bytes,
        reply: FileReply,
        progress: _Progress,
    ) -> None:
        if isinstance(file, DiskFile) and reply.length > SMALL_FILE:
            fileobj = _reopen(file)
            if fileobj is not None:
                with fileobj:
                    file.close()  # one descriptor per transfer is enough
                    writer.write(head)
                    await self._sendfile(writer, fileobj, reply.start, reply.stop, progress)
                return
        await self._send_reads(writer, file, head, reply.start, reply.stop, progress)

    async def _sendfile(
        self,
        writer: asyncio.StreamWriter,
        fileobj: BinaryIO,
        start: int,
        stop: int,
        progress: _Progress,
    ) -> None:
        """Zero-copy: os.sendfile from the page cache to the socket, a chunk per timeout."""
        loop = asyncio.get_running_loop()
        offset = start
        fileobj.seek(start)
        try:
            while offset < stop:
                count = min(SEND_CHUNK, stop - offset)
                async with asyncio.timeout(self.send_timeout):
                    done = await loop.sendfile(writer.transport, fileobj, offset, count)
                self._sent(progress, done)
                offset += done
                if done < count:
                    raise _Truncated(f"file ended at byte {offset}, expected {stop}")
        except (OSError, RuntimeError, asyncio.CancelledError):
            # sendfile leaves the file position after the last byte it sent when it fails (not
            # when cancelled by the timeout: then the count is short by up to a chunk).
            self._sent(progress, max(0, fileobj.tell() - offset))
            raise

    async def _send_reads(
        self,
        writer: asyncio.StreamWriter,
        file: BootFile,
        head: bytes,
        start: int,
        stop: int,
        progress: _Progress,
    ) -> None:
        """Rendered files (no descriptor to sendfile from) and small disk files, via the buffer."""
        offset = start
        pending = head  # the first chunk goes in the same segment as the head
        while offset < stop:
            data = file.read(offset, min(READ_CHUNK, stop - offset))
            if not data:
                raise _Truncated(f"file ended at byte {offset}, expected {stop}")
            writer.write(pending + data if pending else data)
            pending = b""
            offset += len(data)
            self._sent(progress, len(data))
            async with asyncio.timeout(self.send_timeout):
                await writer.drain()

    def _sent(self, progress: _Progress, count: int) -> None:
        progress.sent += count
        self.counters["bytes_sent"] += count


def _client_ip(peer: object) -> str:
    if not isinstance(peer, tuple) or not peer:
        return "unknown"
    host = str(peer[0])
    # A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; leases know them as a.b.c.d.
    return host.removeprefix("::ffff:") if "." in host else host


def _os_error_status(exc: OSError) -> int:
    if isinstance(exc, PermissionError):
        return 403
    if isinstance(exc, FileNotFoundError | IsADirectoryError | NotADirectoryError):
        return 404  # gone or replaced between the lookup and the open
    return 500


def _reopen(file: DiskFile) -> BinaryIO | None:
    """A file object for loop.sendfile, which wants one, over the file BootFiles opened.

    A duplicate of DiskFile's descriptor, not a second open by path: the bytes sent are those
    of the file that was checked to be inside its root, even if the path changed since. The
    shared file offset does not matter, DiskFile reads with pread.
    """
    try:
        return os.fdopen(os.dup(file.fileno()), "rb")
    except OSError:
        return None


def _log_request(
    client_ip: str,
    head: RequestHead,
    status: int,
    sent: int,
    started: float,
    *,
    aborted: bool = False,
) -> None:
    elapsed_ms = (time.monotonic() - started) * 1000
    log.info(
        "HTTP %s %s %s %d %d bytes %.1f ms%s",
        client_ip,
        head.method,
        _printable(head.path),
        status,
        sent,
        elapsed_ms,
        " (aborted)" if aborted else "",
    )


def _printable(text: str) -> str:
    # Request paths are the client's text: escape it so no one can forge log lines with %0a.
    return text.encode("unicode_escape").decode("ascii")
