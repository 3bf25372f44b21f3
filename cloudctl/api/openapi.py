"""The OpenAPI 3.1 document of the API, built from the route table so the two cannot drift."""

from __future__ import annotations

import re
from typing import Any

from cloudctl import __version__
from cloudctl.api.table import ROUTES

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string", "description": "one line for the operator"}},
    },
    "Node": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "mac": {"type": "string"},
            "role": {"type": ["string", "null"], "enum": ["hnode", "snode", None]},
            "ip": {"type": ["string", "null"]},
            "state": {"type": "string", "enum": ["discovered", "registered", "ready", "drained"]},
            "segment": {"type": ["string", "null"], "description": "storage segment"},
            "created_at": {"type": "number"},
            "updated_at": {"type": "number"},
        },
    },
    "Job": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "kind": {"type": "string"},
            "state": {
                "type": "string",
                "enum": ["queued", "running", "succeeded", "failed", "cancelled"],
            },
            "params": {"type": "object"},
            "result": {},
            "error": {"type": ["string", "null"]},
            "actor": {"type": "string"},
            "reason": {"type": ["string", "null"]},
            "created_at": {"type": "number"},
            "started_at": {"type": ["number", "null"]},
            "finished_at": {"type": ["number", "null"]},
        },
    },
    "Image": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "kernel_sha256": {"type": "string"},
            "initrd_sha256": {"type": "string"},
            "hypervisor_sha256": {"type": ["string", "null"]},
            "multiboot": {"type": "boolean"},
            "size": {"type": "integer"},
            "created_at": {"type": "number"},
        },
    },
    "Volume": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "size": {"type": "integer"},
            "origin": {"type": ["string", "null"]},
            "mirrored": {"type": "boolean"},
            "legs": {"type": "array", "items": {"type": "object"}},
            "assigned": {"type": "array", "items": {"type": "string"}},
            "created_at": {"type": "number"},
        },
    },
    "DrbdDevice": {
        "type": "object",
        "description": "one DRBD device and its peer, as a storage node's agent read it "
        "(/proc/drbd of 8.4, or `drbdadm status`); states in DRBD 9's words",
        "required": ["connection", "replication", "role", "peer_role", "disk", "peer_disk"],
        "properties": {
            "resource": {"type": ["string", "null"], "description": "named like its volume"},
            "minor": {"type": ["integer", "null"]},
            "volume": {"type": ["integer", "null"], "description": "DRBD volume number"},
            "connection": {"type": "string", "description": "Connected, Connecting, ..."},
            "replication": {"type": "string", "description": "Established, SyncSource, ..."},
            "role": {"type": "string"},
            "peer_role": {"type": "string"},
            "disk": {"type": "string"},
            "peer_disk": {"type": "string"},
            "peer": {"type": ["string", "null"]},
            "cstate": {"type": ["string", "null"], "description": "8.4's cs: word"},
            "protocol": {"type": ["string", "null"]},
            "sync": {
                "type": ["object", "null"],
                "required": ["action", "percent"],
                "properties": {
                    "action": {"type": "string", "enum": ["sync", "verify"]},
                    "percent": {"type": "number", "minimum": 0, "maximum": 100},
                    "done_kib": {"type": ["integer", "null"]},
                    "total_kib": {"type": ["integer", "null"]},
                    "out_of_sync_kib": {"type": ["integer", "null"]},
                    "finish_s": {"type": ["integer", "null"]},
                    "speed_kib_s": {"type": ["integer", "null"]},
                },
            },
            "out_of_sync_kib": {"type": ["integer", "null"]},
            "in_sync": {"type": "boolean", "description": "derived; ignored in reports"},
        },
    },
    "Profile": {
        "type": "object",
        "properties": {
            "role": {"type": "string", "enum": ["hnode", "snode", "instance", "discovery"]},
            "version": {"type": "integer"},
            "image": {"type": ["string", "null"]},
            "bios_program": {"type": "string"},
            "cmdline": {"type": "string"},
            "hypervisor_args": {"type": "string"},
            "active": {"type": "boolean"},
            "created_at": {"type": "number"},
        },
    },
    "AuditEntry": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "at": {"type": "number"},
            "actor": {"type": "string"},
            "action": {"type": "string"},
            "target": {"type": "string"},
            "reason": {"type": ["string", "null"]},
            "detail": {"type": "object"},
        },
    },
}

_ERROR = {
    "description": "error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


def build_openapi() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for route in ROUTES:
        choices = dict(re.findall(r"\{(\w+):([^}]+)\}", route.template))
        parameters = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {
                    "type": "string",
                    **({"enum": choices[name].split("|")} if name in choices else {}),
                },
            }
            for name in route.pattern.groupindex
        ] + [
            {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
            for name in route.query
        ]
        operation: dict[str, Any] = {
            "summary": route.summary,
            "operationId": route.handler.__name__,
            "parameters": parameters,
            "responses": {
                str(route.status): {
                    "description": "success",
                    "content": {"application/json": {"schema": route.response_schema}},
                },
                "4XX": _ERROR,
                "5XX": _ERROR,
            },
        }
        if route.request_schema is not None:
            operation["requestBody"] = {
                "required": route.method == "POST" and bool(route.request_schema.get("required")),
                "content": {"application/json": {"schema": route.request_schema}},
            }
        template = re.sub(r"\{(\w+):[^}]+\}", r"{\1}", route.template)
        paths.setdefault(template, {})[route.method.lower()] = operation
    paths["/openapi.json"] = {
        "get": {
            "summary": "This document",
            "operationId": "openapi",
            "responses": {"200": {"description": "the OpenAPI document"}},
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cloudctld API",
            "version": __version__,
            "description": "Inventory, jobs and audit of a diskless network-boot cloud. "
            "Unix socket without authentication (file mode controls access); "
            "TCP requires `Authorization: Bearer TOKEN`.",
        },
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": paths,
    }
