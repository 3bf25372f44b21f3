"""Messages between the TFTP server and its transfer workers, as bytes: a `Handoff` gives a worker
one transfer (its socket and file travel beside it as descriptors), a `Report` says how a
transfer ended, `Ready` and `GsoRefused` say what the worker found out.

Pure values <-> JSON over a SOCK_SEQPACKET socketpair (one message per datagram); no I/O.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from cloudctl.pxe.tftp.codec import ReadRequest
from cloudctl.pxe.tftp.session import ReadSession, TransferLimits

__all__ = [
    "GsoRefused",
    "Handoff",
    "HandoffError",
    "Message",
    "Ready",
    "Report",
    "SocketCounts",
    "decode_message",
    "encode_message",
    "report_for",
]


class HandoffError(ValueError):
    """A message between server and worker is not one of ours (a bug, not hostile input)."""


@dataclass(frozen=True, slots=True)
class Handoff:
    """Serve `request` to `peer` from the socket and file descriptors sent with this message."""

    transfer_id: int
    peer: tuple[str, int]
    request: ReadRequest
    limits: TransferLimits
    gso: bool  # the server has not seen the kernel refuse UDP segmentation


@dataclass(frozen=True, slots=True)
class Report:
    """How a transfer ended; counters as in `ReadSession`, plus what the socket saw."""

    transfer_id: int
    state: str  # a SessionState value; "failed" also for a transfer the worker could not run
    failed: str | None
    at_start: bool  # ended by start(): unserved mode or unreadable file
    size: int = 0
    blksize: int = 0
    windowsize: int = 0
    bytes_sent: int = 0
    retransmits: int = 0
    timeouts: int = 0
    ignored_datagrams: int = 0
    unknown_tid: int = 0
    send_errors: int = 0
    send_dropped: int = 0
    internal_error: bool = False  # the worker hit a bug while running it (logged there)


@dataclass(frozen=True, slots=True)
class Ready:
    pid: int


@dataclass(frozen=True, slots=True)
class GsoRefused:
    reason: str


Message = Handoff | Report | Ready | GsoRefused


@dataclass(slots=True)
class SocketCounts:
    """What a worker's transfer socket saw, beside the session's own counters."""

    unknown_tid: int = 0
    send_errors: int = 0
    send_dropped: int = 0


def report_for(
    transfer_id: int, session: ReadSession, counts: SocketCounts, *, at_start: bool
) -> Report:
    """The end of a transfer as the server wants to hear it."""
    return Report(
        transfer_id=transfer_id,
        state=session.state.value,
        failed=session.failed,
        at_start=at_start,
        size=session.size,
        blksize=session.blksize,
        windowsize=session.windowsize,
        bytes_sent=session.bytes_sent,
        retransmits=session.retransmits,
        timeouts=session.timeouts,
        ignored_datagrams=session.ignored_datagrams,
        unknown_tid=counts.unknown_tid,
        send_errors=counts.send_errors,
        send_dropped=counts.send_dropped,
    )


def encode_message(message: Message) -> bytes:
    if isinstance(message, Handoff):
        body: dict[str, Any] = {
            "transfer_id": message.transfer_id,
            "peer": list(message.peer),
            "filename": message.request.filename,
            "mode": message.request.mode,
            "options": message.request.options,
            "limits": asdict(message.limits),
            "gso": message.gso,
        }
    else:
        body = asdict(message)
    return json.dumps({"kind": type(message).__name__, **body}).encode()


def decode_message(data: bytes) -> Message:
    try:
        body = json.loads(data)
        kind = body.pop("kind")
        if kind == "Handoff":
            host, port = body["peer"]
            return Handoff(
                transfer_id=int(body["transfer_id"]),
                peer=(str(host), int(port)),
                request=ReadRequest(body["filename"], body["mode"], dict(body["options"])),
                limits=TransferLimits(**body["limits"]),
                gso=bool(body["gso"]),
            )
        cls = {"Report": Report, "Ready": Ready, "GsoRefused": GsoRefused}[kind]
        return cls(**body)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise HandoffError(f"not a worker message ({exc}): {data[:200]!r}") from None
