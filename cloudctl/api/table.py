"""Every API route, in one table: the server dispatches on it and the OpenAPI document lists it."""

from __future__ import annotations

from cloudctl.api import boot, instances, routes, storage
from cloudctl.api.base import Route
from cloudctl.api.base import match as match_in

ROUTES: tuple[Route, ...] = routes.ROUTES + boot.ROUTES + storage.ROUTES + instances.ROUTES


def match(method: str, path: str) -> tuple[Route, dict[str, str]]:
    return match_in(ROUTES, method, path)
