"""HTTP/1.1 on the wire, without I/O: parse a request head, render a response head.

Shared by the API server and the HTTP boot server; both only move the bytes. It accepts what
well-behaved clients (curl, iPXE, Python's http.client) send and refuses the rest with a status.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qsl, unquote, urlsplit

MAX_HEAD_BYTES = 16 * 1024
_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


_DECIMAL = re.compile(r"[0-9]+")
# A byte position with more digits than this is past the end of any file we could serve.
_MAX_POSITION_DIGITS = 19


class HttpError(Exception):
    """A request that cannot be served; carries the status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class RequestHead:
    method: str
    path: str
    query: dict[str, str]
    version: str
    headers: dict[str, str]

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return connection == "keep-alive"
        return connection != "close"

    def content_length(self, limit: int) -> int:
        if "transfer-encoding" in self.headers:
            raise HttpError(501, "chunked request bodies are not supported; send Content-Length")
        text = self.headers.get("content-length", "0")
        if not text.isdigit():
            raise HttpError(400, f"invalid Content-Length {text!r}")
        length = int(text)
        if length > limit:
            raise HttpError(413, f"request body of {length} bytes is over the {limit}-byte limit")
        return length


def parse_request_head(data: bytes) -> RequestHead:
    """Parse everything up to and including the blank line that ends the head."""
    try:
        text = data.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes any byte
        raise HttpError(400, "undecodable request head") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if not method or not set(method) <= _TOKEN_CHARS:
        raise HttpError(400, "malformed method")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpError(505, f"unsupported protocol version {version!r}")
    if not target.startswith("/"):
        raise HttpError(400, "request target must be an absolute path")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or not set(name) <= _TOKEN_CHARS:
            raise HttpError(400, "malformed header line")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    split = urlsplit(target)
    return RequestHead(
        method=method,
        path=unquote(split.path),
        query=dict(parse_qsl(split.query, keep_blank_values=True)),
        version=version,
        headers=headers,
    )


def render_head(
    status: int, headers: dict[str, str] | None = None, *, content_length: int, keep_alive: bool
) -> bytes:
    phrase = HTTPStatus(status).phrase
    lines = [f"HTTP/1.1 {status} {phrase}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {content_length}")
    lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def render_response(
    status: int,
    body: bytes,
    content_type: str,
    *,
    keep_alive: bool,
    headers: dict[str, str] | None = None,
) -> bytes:
    all_headers = {"Content-Type": content_type, **(headers or {})}
    head = render_head(status, all_headers, content_length=len(body), keep_alive=keep_alive)
    return head + body


def parse_byte_range(value: str, size: int) -> tuple[int, int] | None:
    """The single byte range a `Range` header value asks of a `size`-byte body: (start, stop).

    None means "send the whole body with 200", which RFC 9110 14.2 allows for every Range we do
    not serve as one range: another unit, a malformed value, several ranges. A range wholly past
    the end raises HttpError(416); the caller then sends `Content-Range: bytes */size`.
    """
    unit, sep, spec = value.partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, sep, last = spec.strip().partition("-")
    if not sep:
        return None
    if not first:  # a suffix: the last n bytes
        count = _position(last)
        if count is None:
            return None
        if count == 0:
            raise HttpError(416, "a suffix range of zero bytes selects nothing")
        if size == 0:
            return None  # RFC 9110 14.1.1: satisfiable, but there is nothing to put in a 206
        return max(0, size - count), size
    start = _position(first)
    if start is None:
        return None
    stop = size
    if last:
        end = _position(last)
        if end is None or end < start:
            return None
        stop = min(end + 1, size)
    if start >= size:
        raise HttpError(416, f"range starts at byte {start}, past the end of {size} bytes")
    return start, stop


def _position(text: str) -> int | None:
    if not _DECIMAL.fullmatch(text):
        return None
    digits = text.lstrip("0") or "0"
    # int() of thousands of digits is slow and refused past 4300; the value only needs to be big.
    return 1 << 64 if len(digits) > _MAX_POSITION_DIGITS else int(digits)
