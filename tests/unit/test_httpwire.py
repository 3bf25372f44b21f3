"""The HTTP/1.1 head parser and renderer."""

from __future__ import annotations

import pytest

from cloudctl.httpwire import HttpError, parse_byte_range, parse_request_head, render_response


def test_parse_request_with_query_and_headers():
    head = parse_request_head(
        b"GET /v1/nodes/hn%31?role=hnode&x= HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nx-a: 2\r\n\r\n"
    )
    assert (head.method, head.path, head.version) == ("GET", "/v1/nodes/hn1", "HTTP/1.1")
    assert head.query == {"role": "hnode", "x": ""}
    assert head.headers == {"host": "a", "x-a": "1, 2"}
    assert head.keep_alive
    assert head.content_length(10) == 0


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"GET http://x/ HTTP/1.1\r\n\r\n", 400),
        (b"G(T / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nbad name: x\r\n\r\n", 400),
    ],
)
def test_malformed_heads(raw, status):
    with pytest.raises(HttpError) as info:
        parse_request_head(raw)
    assert info.value.status == status


def test_body_limits():
    head = parse_request_head(b"POST / HTTP/1.0\r\nContent-Length: 11\r\n\r\n")
    assert not head.keep_alive
    with pytest.raises(HttpError) as info:
        head.content_length(10)
    assert info.value.status == 413
    chunked = parse_request_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(HttpError) as info:
        chunked.content_length(10)
    assert info.value.status == 501


def test_render_response():
    raw = render_response(404, b"{}", "application/json", keep_alive=False)
    assert raw == (
        b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
        b"Connection: close\r\n\r\n{}"
    )


@pytest.mark.parametrize(
    ("value", "size", "expected"),
    [
        ("bytes=0-99", 1000, (0, 100)),
        ("bytes=100-", 1000, (100, 1000)),
        ("bytes=-100", 1000, (900, 1000)),
        ("bytes=-5000", 1000, (0, 1000)),  # a suffix longer than the body: all of it
        ("bytes=990-5000", 1000, (990, 1000)),  # last-pos past the end: clamped
        ("bytes=999-999", 1000, (999, 1000)),
        ("Bytes=0-0", 1000, (0, 1)),  # the unit is case-insensitive
        ("bytes= 5-9 ", 1000, (5, 10)),
        ("bytes=0007-0009", 1000, (7, 10)),
        ("bytes=0-" + "9" * 5000, 1000, (0, 1000)),  # beyond int()'s digit limit: still clamped
        ("bytes=0-9,20-29", 1000, None),  # several ranges: the caller sends the whole body
        ("bytes=9-0", 1000, None),  # invalid: ignored
        ("bytes=-", 1000, None),
        ("bytes=", 1000, None),
        ("bytes=a-b", 1000, None),
        ("bytes=+1-2", 1000, None),
        ("bytes=1-\u00b2", 1000, None),  # a Unicode digit int() would take, RFC 9110 would not
        ("bytes 0-9", 1000, None),
        ("items=0-9", 1000, None),
        ("bytes=-5", 0, None),  # satisfiable on an empty body, but there is nothing to send
    ],
)
def test_parse_byte_range(value, size, expected):
    assert parse_byte_range(value, size) == expected


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("bytes=1000-", 1000),
        ("bytes=1000-2000", 1000),
        ("bytes=" + "9" * 5000 + "-", 1000),
        ("bytes=-0", 1000),
        ("bytes=0-", 0),
        ("bytes=0-0", 0),
    ],
)
def test_unsatisfiable_byte_range(value, size):
    with pytest.raises(HttpError) as info:
        parse_byte_range(value, size)
    assert info.value.status == 416
