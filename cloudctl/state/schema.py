"""SQLite schema, as an ordered list of migrations; PRAGMA user_version is the applied count.

Append new migrations at the end; never edit one that has shipped. Later subsystems (leases,
volumes, exports, instances) add their tables here as their own migrations.
"""

from __future__ import annotations

import sqlite3

from cloudctl.state.errors import StateError

MIGRATIONS: tuple[str, ...] = (
    # 1: nodes, jobs, audit log, allocation cursors.
    """
    CREATE TABLE nodes (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        mac TEXT NOT NULL UNIQUE,
        role TEXT CHECK (role IN ('hnode', 'snode')),
        ip INTEGER UNIQUE,
        state TEXT NOT NULL
            CHECK (state IN ('discovered', 'registered', 'ready', 'drained')),
        state_before_drain TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        CHECK (state = 'discovered' OR (role IS NOT NULL AND ip IS NOT NULL))
    );
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        state TEXT NOT NULL
            CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
        params TEXT NOT NULL,
        result TEXT,
        error TEXT,
        actor TEXT NOT NULL,
        reason TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL
    );
    CREATE INDEX jobs_by_state ON jobs (state);
    CREATE TABLE job_progress (
        job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        at REAL NOT NULL,
        line TEXT NOT NULL,
        PRIMARY KEY (job_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        reason TEXT,
        detail TEXT NOT NULL
    );
    CREATE INDEX audit_by_target ON audit (target, id);
    CREATE TABLE cursors (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    """,
    # 2: DHCP leases (one row per MAC; fixed and dynamic) and addresses clients declined.
    """
    CREATE TABLE leases (
        mac TEXT PRIMARY KEY,
        ip INTEGER NOT NULL UNIQUE,
        expires REAL NOT NULL,
        hostname TEXT,
        updated_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE declined_addresses (
        ip INTEGER PRIMARY KEY,
        until REAL NOT NULL,
        mac TEXT NOT NULL
    );
    """,
    # 3: boot images (immutable, imported files) and boot profiles per role, versioned so a
    # rollback returns to the previous version.
    """
    CREATE TABLE images (
        name TEXT PRIMARY KEY,
        kernel_sha256 TEXT NOT NULL,
        initrd_sha256 TEXT NOT NULL,
        hypervisor_sha256 TEXT,
        size INTEGER NOT NULL,
        created_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE profile_versions (
        role TEXT NOT NULL,
        version INTEGER NOT NULL,
        image TEXT REFERENCES images (name),
        bios_program TEXT NOT NULL,
        cmdline TEXT NOT NULL,
        hypervisor_args TEXT NOT NULL,
        active INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        PRIMARY KEY (role, version)
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX one_active_profile ON profile_versions (role) WHERE active;
    """,
    # 4: volumes, their legs on storage nodes (each an AoE export shelf.slot), which nodes may
    # use them (the exports' MAC access lists), and storage nodes in maintenance.
    """
    CREATE TABLE volumes (
        name TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        origin TEXT,
        created_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE shelves (
        shelf INTEGER PRIMARY KEY,
        snode TEXT NOT NULL
    );
    CREATE INDEX shelves_by_snode ON shelves (snode);
    CREATE TABLE volume_legs (
        volume TEXT NOT NULL REFERENCES volumes (name) ON DELETE CASCADE,
        snode TEXT NOT NULL,
        shelf INTEGER NOT NULL,
        slot INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('active', 'failed', 'resyncing')),
        PRIMARY KEY (volume, snode),
        UNIQUE (shelf, slot)
    ) WITHOUT ROWID;
    CREATE INDEX legs_by_snode ON volume_legs (snode);
    CREATE TABLE volume_assignments (
        volume TEXT NOT NULL REFERENCES volumes (name) ON DELETE CASCADE,
        node TEXT NOT NULL,
        PRIMARY KEY (volume, node)
    ) WITHOUT ROWID;
    CREATE INDEX assignments_by_node ON volume_assignments (node);
    CREATE TABLE storage_maintenance (
        snode TEXT PRIMARY KEY,
        started_at REAL NOT NULL
    ) WITHOUT ROWID;
    """,
    # 5: instances (domUs): size, placement rules, and the hardware node each runs on.
    """
    CREATE TABLE instances (
        name TEXT PRIMARY KEY,
        uuid TEXT NOT NULL UNIQUE,
        mac TEXT NOT NULL UNIQUE,
        memory_mib INTEGER NOT NULL,
        vcpus INTEGER NOT NULL,
        node TEXT,
        state TEXT NOT NULL CHECK (state IN
            ('stopped', 'starting', 'running', 'stopping', 'migrating', 'failed', 'lost')),
        grp TEXT,
        profile TEXT NOT NULL,
        volume TEXT REFERENCES volumes (name),
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX instances_by_node ON instances (node);
    CREATE INDEX instances_by_volume ON instances (volume);
    """,
    # 6: storage segments: a hardware node with a segment reaches the storage nodes of that
    # segment and those without one (on the core switch); without one it reaches them all.
    """
    ALTER TABLE nodes ADD COLUMN segment TEXT;
    """,
    # 7: images may carry a root disk; a volume created from one records it, so a storage
    # node creating a leg later still knows what to fill it with.
    """
    ALTER TABLE images ADD COLUMN disk_sha256 TEXT;
    ALTER TABLE images ADD COLUMN disk_size INTEGER;
    ALTER TABLE volumes ADD COLUMN image TEXT REFERENCES images (name);
    """,
    # 8: an instance may ask for HVM (or PVH) instead of the hypervisor section's default.
    """
    ALTER TABLE instances ADD COLUMN boot TEXT CHECK (boot IN ('pvh', 'hvm'));
    """,
)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database to the newest schema; return the version it is now at."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > len(MIGRATIONS):
        raise StateError(
            f"the state database has schema version {current} but this cloudctl knows only "
            f"up to {len(MIGRATIONS)}: run a newer cloudctl, or restore a matching backup"
        )
    for version in range(current + 1, len(MIGRATIONS) + 1):
        # executescript commits first, so wrap each step in its own explicit transaction.
        step = MIGRATIONS[version - 1]
        conn.executescript(f"BEGIN IMMEDIATE;\n{step}\nPRAGMA user_version = {version};\nCOMMIT;")
    return len(MIGRATIONS)
