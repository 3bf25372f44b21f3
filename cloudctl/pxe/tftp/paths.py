"""Map a filename from a TFTP request to a path that is guaranteed to lie inside the served root.

Only path arithmetic plus `realpath`; it never opens files. The server answers ERROR 2 (access
violation) with the message of `TftpPathError` and logs it.

Rules, in order (`\\` is treated as `/` first, since PXE ROMs written for Windows servers send it):
  * refuse NUL, empty names and names longer than `max_len` characters;
  * strip ONE leading `/`: `/pxelinux.0` means `<root>/pxelinux.0`, as tftpd-hpa does with `-s`;
    a name still absolute after that (`//etc/passwd`, `C:/boot`) is refused;
  * drop empty and `.` components; refuse any `..` component, even one that would stay inside
    the root (`a/../b`): no legitimate boot file name needs it, and refusing is simpler to audit;
  * resolve symlinks and refuse the result unless it is inside the (resolved) root.
The check cannot stop a symlink from being swapped between this call and the open: roots must
not be writable by untrusted users.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["DEFAULT_MAX_NAME_LEN", "TftpPathError", "resolve_inside"]

DEFAULT_MAX_NAME_LEN = 255

_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")


class TftpPathError(ValueError):
    """A requested name is unsafe or does not name a file inside the root."""


def resolve_inside(root: Path, requested: str, *, max_len: int = DEFAULT_MAX_NAME_LEN) -> Path:
    """Return the real path of `requested` inside `root`, or raise `TftpPathError`.

    The result has symlinks resolved; it may not exist (the caller reports file-not-found).
    """
    if "\x00" in requested:
        raise TftpPathError("requested name contains a NUL byte")
    if not requested:
        raise TftpPathError("requested name is empty")
    if len(requested) > max_len:
        raise TftpPathError(f"requested name is {len(requested)} characters, limit {max_len}")

    name = requested.replace("\\", "/")
    if name.startswith("/"):
        name = name[1:]
    if name.startswith("/") or _DRIVE_LETTER.match(name):
        raise TftpPathError(f"absolute path {requested!r} refused")

    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise TftpPathError(f"parent-directory component in {requested!r} refused")
    if not parts:
        raise TftpPathError(f"{requested!r} names the root directory, not a file")

    real_root = Path(os.path.realpath(root))
    real_candidate = Path(os.path.realpath(real_root.joinpath(*parts)))
    if real_candidate == real_root or not real_candidate.is_relative_to(real_root):
        raise TftpPathError(f"{requested!r} resolves outside the root (symlink?)")
    return real_candidate
