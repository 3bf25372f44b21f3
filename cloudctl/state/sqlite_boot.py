"""SQLite records of boot images and versioned boot profiles (a mixin of SqliteStore).

An image row is written only after its files are in place and never changes. Each `profile
set` adds a version and makes it active; a rollback activates the version before the active
one, so the previous image stays bootable until the operator moves on again.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from cloudctl.state.audit import record as record_audit
from cloudctl.state.errors import Conflict, NotFound
from cloudctl.state.models import Image, Profile
from cloudctl.state.store import Change

_IMAGE_COLUMNS = (
    "name, kernel_sha256, initrd_sha256, hypervisor_sha256, size, created_at, "
    "disk_sha256, disk_size"
)
_PROFILE_BY_VERSION = "SELECT {} FROM profile_versions WHERE role = ? AND version = ?"
_PROFILE_COLUMNS = (
    "role, version, image, bios_program, cmdline, hypervisor_args, active, created_at"
)


def _profile(row: tuple) -> Profile:
    role, version, image, bios_program, cmdline, hypervisor_args, active, created_at = row
    return Profile(
        role, version, image, bios_program, cmdline, hypervisor_args, bool(active), created_at
    )


class BootRecords:
    """Needs `_write(op)` and `_read(sql, args)` from the store it is mixed into."""

    async def _write(self, op: Any) -> Any: ...  # provided by SqliteStore

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]: ...  # provided by SqliteStore

    # images
    async def add_image(self, image: Image, change: Change) -> Image:
        def op(conn: sqlite3.Connection) -> Image:
            if conn.execute("SELECT 1 FROM images WHERE name = ?", (image.name,)).fetchone():
                raise Conflict(
                    f"an image named {image.name} already exists (images never change: "
                    "import under a new name)"
                )
            conn.execute(
                f"INSERT INTO images ({_IMAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    image.name,
                    image.kernel_sha256,
                    image.initrd_sha256,
                    image.hypervisor_sha256,
                    image.size,
                    image.created_at,
                    image.disk_sha256,
                    image.disk_size,
                ),
            )
            record_audit(
                conn,
                change,
                "image.import",
                f"image/{image.name}",
                size=image.size,
                multiboot=image.multiboot,
            )
            return image

        return await self._write(op)

    async def remove_image(self, name: str, change: Change) -> Image:
        def op(conn: sqlite3.Connection) -> Image:
            row = conn.execute(
                f"SELECT {_IMAGE_COLUMNS} FROM images WHERE name = ?", (name,)
            ).fetchone()
            if row is None:
                raise NotFound(f"no image named {name!r}")
            users = conn.execute(
                "SELECT DISTINCT role FROM profile_versions WHERE image = ? ORDER BY role", (name,)
            ).fetchall()
            if users:
                roles = ", ".join(r[0] for r in users)
                raise Conflict(f"image {name} is used by the {roles} profile (current or rollback)")
            volumes = [
                r[0]
                for r in conn.execute(
                    "SELECT name FROM volumes WHERE image = ? ORDER BY name", (name,)
                )
            ]
            if volumes:
                raise Conflict(
                    f"volumes {', '.join(volumes)} were created from image {name} "
                    "(their legs are filled from it): delete them first"
                )
            conn.execute("DELETE FROM images WHERE name = ?", (name,))
            record_audit(conn, change, "image.remove", f"image/{name}")
            return Image(*row)

        return await self._write(op)

    def get_image(self, name: str) -> Image | None:
        rows = self._read(f"SELECT {_IMAGE_COLUMNS} FROM images WHERE name = ?", (name,))
        return Image(*rows[0]) if rows else None

    def list_images(self) -> list[Image]:
        return [
            Image(*row) for row in self._read(f"SELECT {_IMAGE_COLUMNS} FROM images ORDER BY name")
        ]

    # profiles
    async def set_profile(
        self,
        role: str,
        *,
        image: str | None,
        bios_program: str,
        cmdline: str,
        hypervisor_args: str,
        change: Change,
    ) -> Profile:
        def op(conn: sqlite3.Connection) -> Profile:
            if (
                image is not None
                and not conn.execute("SELECT 1 FROM images WHERE name = ?", (image,)).fetchone()
            ):
                raise NotFound(f"no image named {image!r}: import it with `cloudctl image import`")
            version = conn.execute(
                "SELECT coalesce(max(version), 0) + 1 FROM profile_versions WHERE role = ?", (role,)
            ).fetchone()[0]
            conn.execute(
                "UPDATE profile_versions SET active = 0 WHERE role = ? AND active", (role,)
            )
            conn.execute(
                f"INSERT INTO profile_versions ({_PROFILE_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, 1, ?)",
                (role, version, image, bios_program, cmdline, hypervisor_args, time.time()),
            )
            record_audit(
                conn,
                change,
                "profile.set",
                f"profile/{role}",
                version=version,
                image=image,
                bios_program=bios_program,
                cmdline=cmdline,
                hypervisor_args=hypervisor_args,
            )
            return _profile(
                conn.execute(
                    _PROFILE_BY_VERSION.format(_PROFILE_COLUMNS),
                    (role, version),
                ).fetchone()
            )

        return await self._write(op)

    async def rollback_profile(self, role: str, change: Change) -> Profile:
        def op(conn: sqlite3.Connection) -> Profile:
            row = conn.execute(
                "SELECT version FROM profile_versions WHERE role = ? AND active", (role,)
            ).fetchone()
            if row is None:
                raise NotFound(f"the {role} profile has never been set")
            earlier = conn.execute(
                "SELECT max(version) FROM profile_versions WHERE role = ? AND version < ?",
                (role, row[0]),
            ).fetchone()[0]
            if earlier is None:
                raise Conflict(
                    f"the {role} profile is at its first version: nothing to roll back to"
                )
            conn.execute(
                "UPDATE profile_versions SET active = 0 WHERE role = ? AND active", (role,)
            )
            conn.execute(
                "UPDATE profile_versions SET active = 1 WHERE role = ? AND version = ?",
                (role, earlier),
            )
            record_audit(
                conn,
                change,
                "profile.rollback",
                f"profile/{role}",
                from_version=row[0],
                to_version=earlier,
            )
            return _profile(
                conn.execute(
                    _PROFILE_BY_VERSION.format(_PROFILE_COLUMNS),
                    (role, earlier),
                ).fetchone()
            )

        return await self._write(op)

    def get_profile(self, role: str) -> Profile | None:
        rows = self._read(
            f"SELECT {_PROFILE_COLUMNS} FROM profile_versions WHERE role = ? AND active", (role,)
        )
        return _profile(rows[0]) if rows else None

    def profile_history(self, role: str) -> list[Profile]:
        rows = self._read(
            f"SELECT {_PROFILE_COLUMNS} FROM profile_versions WHERE role = ? ORDER BY version",
            (role,),
        )
        return [_profile(row) for row in rows]
