"""HTTP/1.1 on the wire, without I/O: parse a request head, render a response head.

Shared by the API server and the HTTP boot server; both only move the bytes. It accepts what
well-behaved clients (curl, iPXE, Python's http.client) send and refuses the rest with a status.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qsl, unquote, urlsplit

MAX_HEAD_BYTES = 16 * 1024
_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


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
