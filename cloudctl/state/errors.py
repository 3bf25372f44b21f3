"""Errors of the state store: one base type, with the two cases callers act on."""


class StateError(Exception):
    """The store cannot do what was asked; the message says what and why."""


class NotFound(StateError):
    """The named object does not exist."""


class Conflict(StateError):
    """The write would break a uniqueness or lifecycle rule (duplicate MAC, IP, name...)."""
