"""HttpBootServer on 127.0.0.1 (port from the OS) spoken to with raw asyncio streams: files,
ranges, refusals, keep-alive and pipelining, rendered scripts, timeouts and the connection cap."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cloudctl.httpwire import parse_request_head
from cloudctl.pxe.bootfiles import BootFiles
from cloudctl.pxe.http import (
    SMALL_FILE,
    HttpBootError,
    HttpBootServer,
    content_type,
    plan_file_reply,
    refused_name,
)

MAC = "52:54:00:12:34:56"
SECRET = b"root:x:0:0:SECRET-OUTSIDE-THE-ROOT\n"
KERNEL = random.Random(7).randbytes(1 << 20)  # over SMALL_FILE: goes out with sendfile
SMALL = b"small file body\n"
PXELINUX_CFG = b"DEFAULT linux\nLABEL linux\n  KERNEL kernel\n"


def render(name: str, mac: str | None, client_ip: str | None) -> bytes | None:
    if name == "boot/node.ipxe":
        return f"#!ipxe\necho mac={mac} ip={client_ip}\n".encode()
    if name == "boot/broken.ipxe":
        raise RuntimeError("inventory unavailable")
    return None


@pytest.fixture
def files(tmp_path: Path) -> BootFiles:
    root = tmp_path / "root"
    (root / "pxelinux.cfg").mkdir(parents=True)
    (root / "kernel").write_bytes(KERNEL)
    (root / "small.bin").write_bytes(SMALL)
    (root / "empty").write_bytes(b"")
    (root / "pxelinux.cfg" / "default").write_bytes(PXELINUX_CFG)
    (tmp_path / "secret").write_bytes(SECRET)
    (root / "escape").symlink_to(tmp_path / "secret")
    return BootFiles(roots=(root,), render=render, packaged={})


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class Client:
    """One connection; `send` writes raw bytes, `response` reads one response off the stream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, server: HttpBootServer) -> Client:
        return cls(*await asyncio.open_connection(*server.address))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, *, head_only: bool = False) -> Response:
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        version, status, _phrase = lines[0].split(" ", 2)
        assert version == "HTTP/1.1"
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.lower()] = value.strip()
        body = b"" if head_only else await self.reader.readexactly(int(headers["content-length"]))
        return Response(int(status), headers, body)

    async def request(self, raw: bytes, *, head_only: bool = False) -> Response:
        await self.send(raw)
        return await self.response(head_only=head_only)

    async def closed_by_server(self) -> bool:
        """Whether the server ends the connection (EOF or reset) after what it already sent."""
        try:
            async with asyncio.timeout(5):
                while await self.reader.read(1 << 20):
                    pass
        except ConnectionResetError:
            pass
        except TimeoutError:
            return False
        finally:
            self.close()
        return True

    def close(self) -> None:
        self.writer.close()


def get(path: str, *extra: str, method: str = "GET", version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {path} {version}", "Host: boot", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


Scenario = Callable[[HttpBootServer], Awaitable[Any]]


def serve(files: BootFiles, scenario: Scenario, **options: Any) -> HttpBootServer:
    """Run `scenario` against a started server in a fresh event loop; return the server."""
    options.setdefault("mac_lookup", {"127.0.0.1": MAC}.get)

    async def main() -> HttpBootServer:
        server = HttpBootServer(files, host="127.0.0.1", port=0, **options)
        await server.start()
        try:
            await asyncio.wait_for(scenario(server), 20)
        finally:
            await server.close()
        return server

    return asyncio.run(main())


async def fetch(server: HttpBootServer, raw: bytes, *, head_only: bool = False) -> Response:
    client = await Client.connect(server)
    try:
        return await client.request(raw, head_only=head_only)
    finally:
        client.close()


# --- whole files, HEAD, content types ----------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "kind"),
    [
        ("/kernel", KERNEL, "application/octet-stream"),
        ("/small.bin", SMALL, "application/octet-stream"),
        ("/pxelinux.cfg/default", PXELINUX_CFG, "text/plain"),
        ("/empty", b"", "application/octet-stream"),
    ],
)
def test_get_sends_exact_bytes_and_headers(files, path, body, kind):
    async def scenario(server):
        response = await fetch(server, get(path))
        assert response.status == 200
        assert response.body == body
        assert response.headers["content-length"] == str(len(body))
        assert response.headers["content-type"] == kind
        assert response.headers["accept-ranges"] == "bytes"
        assert response.headers["connection"] == "keep-alive"
        assert "content-range" not in response.headers

    server = serve(files, scenario)
    assert server.counters["ok"] == 1
    assert server.counters["bytes_sent"] == len(body)


def test_head_sends_headers_only(files):
    async def scenario(server):
        client = await Client.connect(server)
        response = await client.request(get("/kernel", method="HEAD"), head_only=True)
        assert response.status == 200
        assert response.headers["content-length"] == str(len(KERNEL))
        # Had any body followed the head, this would read it as the next status line.
        assert (await client.request(get("/small.bin"))).body == SMALL
        client.close()

    server = serve(files, scenario)
    assert server.counters["bytes_sent"] == len(SMALL)


def test_query_string_is_ignored_and_percent_escapes_decoded(files):
    async def scenario(server):
        response = await fetch(server, get("/sm%61ll.bin?arch=x86_64&mac=01-aa"))
        assert (response.status, response.body) == (200, SMALL)

    serve(files, scenario)


# --- ranges ------------------------------------------------------------------------------------

SIZE = len(KERNEL)


@pytest.mark.parametrize(
    ("spec", "start", "stop"),
    [
        ("bytes=0-99", 0, 100),
        ("bytes=1000-", 1000, SIZE),
        ("bytes=-500", SIZE - 500, SIZE),
        ("bytes=100-99999999999999999999999", 100, SIZE),  # last-pos past the end: clamped
        ("bytes=-99999999", 0, SIZE),  # a suffix longer than the file: all of it
        (f"bytes={SIZE - 1}-{SIZE - 1}", SIZE - 1, SIZE),
        (f"bytes=0-{SMALL_FILE}", 0, SMALL_FILE + 1),  # just over: sendfile for a range
        ("bytes=10-20", 10, 21),  # small: the buffered path for a range
    ],
)
def test_single_range_gets_206(files, spec, start, stop):
    async def scenario(server):
        response = await fetch(server, get("/kernel", f"Range: {spec}"))
        assert response.status == 206
        assert response.body == KERNEL[start:stop]
        assert response.headers["content-range"] == f"bytes {start}-{stop - 1}/{SIZE}"
        assert response.headers["content-length"] == str(stop - start)

    server = serve(files, scenario)
    assert server.counters["partial"] == 1


@pytest.mark.parametrize(("spec", "start", "stop"), [("bytes=0-5", 0, 6), ("bytes=7-", 7, None)])
def test_range_of_a_rendered_file(files, spec, start, stop):
    async def scenario(server):
        whole = (await fetch(server, get("/boot/node.ipxe"))).body
        response = await fetch(server, get("/boot/node.ipxe", f"Range: {spec}"))
        assert (response.status, response.body) == (206, whole[start:stop])
        end = (stop or len(whole)) - 1
        assert response.headers["content-range"] == f"bytes {start}-{end}/{len(whole)}"

    serve(files, scenario)


@pytest.mark.parametrize("spec", [f"bytes={SIZE}-", f"bytes={SIZE + 5}-{SIZE + 10}", "bytes=-0"])
def test_unsatisfiable_range_gets_416(files, spec):
    async def scenario(server):
        client = await Client.connect(server)
        response = await client.request(get("/kernel", f"Range: {spec}"))
        assert response.status == 416
        assert response.headers["content-range"] == f"bytes */{SIZE}"
        assert response.body == b""
        assert (await client.request(get("/small.bin"))).body == SMALL  # still in step
        client.close()

    server = serve(files, scenario)
    assert server.counters["range_not_satisfiable"] == 1


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("GET", "Range: bytes=0-9,20-29"),  # several ranges: the whole file, as RFC 9110 allows
        ("GET", "Range: bytes=9-0"),  # invalid: ignored
        ("GET", "Range: items=0-9"),  # a unit we do not know: ignored
        ("GET", "Range: bytes=abc"),
        ("HEAD", "Range: bytes=0-9"),  # range handling is defined for GET only
    ],
)
def test_ranges_we_do_not_serve_get_the_whole_file(files, method, extra):
    async def scenario(server):
        head_only = method == "HEAD"
        response = await fetch(server, get("/kernel", extra, method=method), head_only=head_only)
        assert response.status == 200
        assert response.headers["content-length"] == str(SIZE)
        assert "content-range" not in response.headers
        if not head_only:
            assert response.body == KERNEL

    serve(files, scenario)


def test_if_range_gets_the_whole_file(files):
    # We send no validators, so no If-Range can match: the client must get the current file.
    async def scenario(server):
        response = await fetch(server, get("/kernel", "Range: bytes=0-9", 'If-Range: "abc"'))
        assert (response.status, len(response.body)) == (200, SIZE)

    serve(files, scenario)


# --- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/missing", 404),
        ("/pxelinux.cfg/01-52-54-00-00-00-01", 404),
        ("/../secret", 403),
        ("/%2e%2e/secret", 403),
        ("/%2E%2E%2Fsecret", 403),
        ("/pxelinux.cfg/../../secret", 403),
        ("/..%5csecret", 403),  # a backslash is a separator to BootFiles, as PXE ROMs use it
        ("/escape", 403),  # a symlink out of the root
        ("/", 403),  # the root directory is not a file and is not listed
        ("/pxelinux.cfg", 404),  # a directory inside the root
        ("/kernel%00.ipxe", 400),
        ("/kernel%0a", 400),
    ],
)
def test_refusals(files, path, status):
    async def scenario(server):
        client = await Client.connect(server)
        response = await client.request(get(path))
        assert response.status == status
        assert SECRET not in response.body
        assert response.headers["content-type"] == "text/plain"
        assert (await client.request(get("/small.bin"))).body == SMALL  # still in step
        client.close()

    server = serve(files, scenario)
    key = {400: "bad_request", 403: "forbidden", 404: "not_found"}[status]
    assert server.counters[key] == 1


def test_head_of_missing_file_has_no_body(files):
    async def scenario(server):
        client = await Client.connect(server)
        response = await client.request(get("/missing", method="HEAD"), head_only=True)
        assert response.status == 404
        assert (await client.request(get("/small.bin"))).body == SMALL
        client.close()

    serve(files, scenario)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
def test_other_methods_get_405(files, method):
    async def scenario(server):
        client = await Client.connect(server)
        response = await client.request(get("/kernel", method=method))
        assert response.status == 405
        assert response.headers["allow"] == "GET, HEAD"
        assert response.headers["connection"] == "keep-alive"
        assert (await client.request(get("/small.bin"))).body == SMALL
        client.close()

    server = serve(files, scenario)
    assert server.counters["method_not_allowed"] == 1


def test_request_with_body_gets_its_answer_then_close(files):
    async def scenario(server):
        client = await Client.connect(server)
        response = await client.request(get("/x", "Content-Length: 5", method="POST") + b"hello")
        assert response.status == 405
        assert response.headers["connection"] == "close"
        assert await client.closed_by_server()

    serve(files, scenario)


@pytest.mark.parametrize(
    "raw",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",  # a TLS ClientHello
        b"GET /\r\n\r\n",
        b"GET  /kernel HTTP/1.1\r\n\r\n",
        b"GET kernel HTTP/1.1\r\n\r\n",
        b"GET /kernel HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET /kernel HTTP/1.1\r\nbad name: x\r\n\r\n",
        b"\xff\xfe\xfd\r\n\r\n",
        b"GET /kernel HTTP/2.0\r\n\r\n",  # 505, counted with the malformed
    ],
)
def test_malformed_head_gets_400_and_close(files, raw):
    async def scenario(server):
        client = await Client.connect(server)
        response = await client.request(raw)
        assert response.status in (400, 505)
        assert response.headers["connection"] == "close"
        assert await client.closed_by_server()

    server = serve(files, scenario)
    assert server.counters["bad_request"] == 1


def test_oversized_head_gets_431(files):
    async def scenario(server):
        client = await Client.connect(server)
        await client.send(b"GET /kernel HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 20000 + b"\r\n\r\n")
        response = await client.response()
        assert response.status == 431
        assert await client.closed_by_server()

    server = serve(files, scenario)
    assert server.counters["bad_request"] == 1


# --- connections -------------------------------------------------------------------------------


def test_keep_alive_two_requests_on_one_connection(files):
    async def scenario(server):
        client = await Client.connect(server)
        assert (await client.request(get("/kernel"))).body == KERNEL
        assert (await client.request(get("/pxelinux.cfg/default"))).body == PXELINUX_CFG
        client.close()

    server = serve(files, scenario)
    assert (server.counters["connections"], server.counters["requests"]) == (1, 2)


def test_pipelined_requests_are_answered_in_order(files):
    async def scenario(server):
        client = await Client.connect(server)
        await client.send(
            get("/small.bin")
            + get("/kernel", method="HEAD")
            + get("/kernel", "Range: bytes=10-19")
            + get("/missing")
            + b"\r\n"  # a stray blank line before the next request line is ignored
            + get("/boot/node.ipxe", "Connection: close")
        )
        assert (await client.response()).body == SMALL
        head = await client.response(head_only=True)
        assert (head.status, head.headers["content-length"]) == (200, str(SIZE))
        ranged = await client.response()
        assert (ranged.status, ranged.body) == (206, KERNEL[10:20])
        assert (await client.response()).status == 404
        last = await client.response()
        assert last.body.startswith(b"#!ipxe")
        assert last.headers["connection"] == "close"
        assert await client.closed_by_server()

    server = serve(files, scenario)
    assert server.counters["requests"] == 5


@pytest.mark.parametrize(
    ("version", "extra", "kept"),
    [
        ("HTTP/1.0", (), False),
        ("HTTP/1.0", ("Connection: keep-alive",), True),
        ("HTTP/1.1", ("Connection: close",), False),
    ],
)
def test_connection_semantics(files, version, extra, kept):
    async def scenario(server):
        client = await Client.connect(server)
        response = await client.request(get("/small.bin", *extra, version=version))
        assert response.body == SMALL
        assert response.headers["connection"] == ("keep-alive" if kept else "close")
        if kept:
            assert (await client.request(get("/small.bin", *extra, version=version))).body
        else:
            assert await client.closed_by_server()
        client.close()

    serve(files, scenario)


def test_idle_connection_is_closed(files):
    async def scenario(server):
        client = await Client.connect(server)
        assert (await client.request(get("/small.bin"))).body == SMALL
        await client.send(b"GET /small.bin HTT")  # a head that never ends
        assert await client.closed_by_server()

    server = serve(files, scenario, idle_timeout=0.2)
    assert server.counters["timeouts"] == 1


def test_connection_cap_turns_the_next_client_away_with_503(files):
    async def scenario(server):
        first = await Client.connect(server)
        assert (await first.request(get("/small.bin"))).body == SMALL
        second = await Client.connect(server)
        refused = await second.request(get("/small.bin"))
        assert (refused.status, refused.headers["retry-after"]) == (503, "1")
        assert await second.closed_by_server()
        assert (await first.request(get("/small.bin"))).body == SMALL
        first.close()
        await asyncio.sleep(0.05)  # let the server see the close and free the slot
        assert (await fetch(server, get("/small.bin"))).body == SMALL

    server = serve(files, scenario, max_connections=1)
    assert server.counters["rejected"] == 1


def _reluctant_reader(server: HttpBootServer) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    sock.connect_ex(server.address)
    return sock


@pytest.fixture
def big_files(files: BootFiles) -> BootFiles:
    # Sparse, so it costs no disk; far more than loopback's socket buffers hold.
    with open(files.roots[0] / "big", "wb") as big:
        big.truncate(256 << 20)
    return files


def test_client_that_stops_reading_is_dropped(big_files):
    async def scenario(server):
        loop = asyncio.get_running_loop()
        sock = _reluctant_reader(server)
        await asyncio.sleep(0.05)
        await loop.sock_sendall(sock, get("/big"))
        await asyncio.sleep(1.0)  # send_timeout is 0.3 s: the server gives up and closes
        received = 0
        with contextlib.suppress(ConnectionResetError):
            while data := await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 5):
                received += len(data)
        sock.close()
        assert received < 256 << 20  # short of the Content-Length: the client knows
        assert (await fetch(server, get("/small.bin"))).body == SMALL

    server = serve(big_files, scenario, send_timeout=0.3)
    assert server.counters["timeouts"] == 1
    assert server.counters["aborted"] == 1


def test_client_that_goes_away_mid_transfer(big_files):
    async def scenario(server):
        client = await Client.connect(server)
        await client.send(get("/big"))
        await client.reader.readexactly(1 << 20)
        client.writer.transport.abort()
        await asyncio.sleep(0.2)
        assert (await fetch(server, get("/small.bin"))).body == SMALL

    server = serve(big_files, scenario)
    assert server.counters["aborted"] == 1


def test_close_ends_open_connections(big_files):
    async def scenario(server):
        clients = [await Client.connect(server) for _ in range(3)]
        await clients[0].send(get("/big"))
        await clients[0].reader.readexactly(1000)
        await clients[1].send(b"GET /ha")
        await server.close()
        for client in clients:
            assert await client.closed_by_server()

    serve(big_files, scenario)


def test_start_error_names_the_address(files):
    async def scenario(server):
        clash = HttpBootServer(files, host="127.0.0.1", port=server.address[1])
        with pytest.raises(HttpBootError, match=r"127\.0\.0\.1:\d+.*another web server"):
            await clash.start()

    serve(files, scenario)


def _mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        action = rng.randrange(4)
        at = rng.randrange(len(out) + 1)
        if action == 0 and out:
            out[min(at, len(out) - 1)] = rng.randrange(256)
        elif action == 1:
            out[at:at] = rng.choice([b"\r\n", b" ", b"%", b"%00", b"/..", b":", b"\x00", b"-"])
        elif action == 2:
            del out[at : at + rng.randint(1, 4)]
        else:
            out[at:at] = out[rng.randrange(len(out) + 1) :][: rng.randint(1, 40)]
    return bytes(out)


def test_mutated_requests_never_break_the_server(files):
    seeds = [
        get("/kernel", "Range: bytes=10-99") + get("/small.bin", method="HEAD"),
        get("/boot/node.ipxe", "Connection: close", version="HTTP/1.0"),
        get("/pxelinux.cfg/default", "Range: bytes=-5", "Content-Length: 3") + b"abc",
    ]
    rng = random.Random(20240601)

    async def one(server, data):
        client = await Client.connect(server)
        await client.send(data)
        client.writer.write_eof()
        with contextlib.suppress(ConnectionResetError):
            async with asyncio.timeout(5):
                while await client.reader.read(1 << 20):
                    pass
        client.close()

    async def scenario(server):
        for _ in range(30):
            await asyncio.gather(
                *(one(server, _mutate(rng, rng.choice(seeds))) for _i in range(20))
            )
        assert (await fetch(server, get("/small.bin"))).body == SMALL

    server = serve(files, scenario, idle_timeout=1.0)
    assert server.counters["errors"] == 0
    assert server.counters["connections"] == 601
    assert server.counters["bad_request"] > 0 and server.counters["ok"] > 0


# --- rendered files ----------------------------------------------------------------------------


def test_rendered_script_gets_the_mac_from_the_lookup(files):
    async def scenario(server):
        response = await fetch(server, get("/boot/node.ipxe"))
        assert response.status == 200
        assert response.body == f"#!ipxe\necho mac={MAC} ip=127.0.0.1\n".encode()
        assert response.headers["content-type"] == "text/plain"
        assert response.headers["cache-control"] == "no-store"

    serve(files, scenario)


def test_rendered_script_without_a_lookup_gets_no_mac(files):
    async def scenario(server):
        response = await fetch(server, get("/boot/node.ipxe"))
        assert response.body == b"#!ipxe\necho mac=None ip=127.0.0.1\n"

    serve(files, scenario, mac_lookup=None)


def test_renderer_failure_is_500_and_the_connection_goes_on(files, caplog):
    async def scenario(server):
        client = await Client.connect(server)
        assert (await client.request(get("/boot/broken.ipxe"))).status == 500
        assert (await client.request(get("/small.bin"))).body == SMALL
        client.close()

    with caplog.at_level(logging.ERROR, logger="cloudctl.pxe.http"):
        server = serve(files, scenario)
    assert server.counters["errors"] == 1
    assert "inventory unavailable" in caplog.text


def test_mac_lookup_failure_is_500(files):
    def lookup(ip: str) -> str | None:
        raise KeyError(ip)

    async def scenario(server):
        assert (await fetch(server, get("/boot/node.ipxe"))).status == 500

    serve(files, scenario, mac_lookup=lookup)


def test_one_info_line_per_file_request(files, caplog):
    async def scenario(server):
        client = await Client.connect(server)
        await client.request(get("/kernel"))
        await client.request(get("/missing%0a%0dINJECTED"))
        await client.request(get("/x", method="DELETE"))
        client.close()

    with caplog.at_level(logging.INFO, logger="cloudctl.pxe.http"):
        serve(files, scenario)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    served = [line for line in lines if line.startswith("HTTP 127.0.0.1")]
    assert served[0].startswith(f"HTTP 127.0.0.1 GET /kernel 200 {SIZE} bytes ")
    assert served[1].startswith("HTTP 127.0.0.1 GET /missing\\n\\rINJECTED 400 0 bytes")
    assert len(served) == 2  # the 405 is a DEBUG line


# --- the pure parts ----------------------------------------------------------------------------


def test_content_type_table():
    assert content_type("boot/52-54-00-12-34-56.ipxe") == "text/plain"
    assert content_type("pxelinux.cfg/01-52-54-00-12-34-56") == "text/plain"
    assert content_type("bios/pxelinux.cfg/default") == "text/plain"
    assert content_type("images/debian/vmlinuz") == "application/octet-stream"
    assert content_type("pxelinux.0") == "application/octet-stream"


def test_refused_names():
    assert refused_name("/a/../b") == 403
    assert refused_name("/..\\b") == 403
    assert refused_name("/a\x00") == 400
    assert refused_name("/a..b/c.") is None
    assert refused_name("/pxelinux.cfg/default") is None


def test_plan_file_reply():
    head = parse_request_head(b"GET /k HTTP/1.1\r\nRange: bytes=-10\r\n\r\n")
    reply = plan_file_reply(head, "k", 100, rendered=False)
    assert (reply.status, reply.start, reply.stop, reply.length) == (206, 90, 100, 10)
    assert reply.headers["Content-Range"] == "bytes 90-99/100"
    assert "Cache-Control" not in reply.headers
    empty = plan_file_reply(head, "k", 0, rendered=True)
    assert (empty.status, empty.length, empty.headers["Cache-Control"]) == (200, 0, "no-store")


def test_sendfile_threshold_is_exercised():
    # The 1 MiB kernel must take the sendfile path and the small files the buffered one.
    assert len(KERNEL) > SMALL_FILE > max(len(SMALL), len(PXELINUX_CFG))


def test_file_replaced_by_a_different_size_is_still_served_consistently(files, monkeypatch):
    # The sendfile path reopens DiskFile.path; if that no longer matches, DiskFile's own
    # descriptor is read instead, so the body still matches the Content-Length we announced.
    real_open = BootFiles.open

    def open_then_replace(self, requested, **kwargs):
        file = real_open(self, requested, **kwargs)
        replacement = file.path.with_suffix(".new")
        replacement.write_bytes(b"x" * 10)
        os.replace(replacement, file.path)
        return file

    monkeypatch.setattr(BootFiles, "open", open_then_replace)

    async def scenario(server):
        response = await fetch(server, get("/kernel"))
        assert (response.status, response.body) == (200, KERNEL)

    serve(files, scenario)
