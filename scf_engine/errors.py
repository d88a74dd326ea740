"""One base for every error a user can cause, so the command line (and, later, a
service) can turn any of them into one line and the unusable-input exit code, and never
a traceback.

The engine raises these for what a user can fix: a dataset, a request, a policy file, the
tracking store, the audit log. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ScfError(Exception):
    """A problem the user can fix; the message is one line that names the file, option or
    object and the problem."""


class DatasetError(ScfError):
    """The dataset (or a file beside it: the batch, consents) cannot be used: a missing
    file or column, an unreadable file, or nothing left to score."""


class RequestError(ScfError):
    """The command's own arguments cannot be honoured (a date that is not a date, an
    option that needs another, a model kind that does not exist)."""


class PolicyError(ScfError, ValueError):
    """A policy file in ``models/`` does not match its schema, or no longer matches what a
    trained model was validated with."""


class ModelNotFound(ScfError, LookupError):
    """No registered model (or training run) where a command needs one."""


class TrackingError(ScfError):
    """The tracking store cannot be reached or refused an operation."""


class OutputError(ScfError, OSError):
    """An output (limits, memos, reports) cannot be written: a folder that is not
    writable, a full disk. Nothing half-written is left in its place."""


class AuditError(ScfError, RuntimeError):
    """The audit log cannot be appended to safely (its last line is broken), or read."""


__all__ = ["ScfError", "DatasetError", "RequestError", "PolicyError", "ModelNotFound", "TrackingError", "OutputError",
           "AuditError"]
