"""Exception types with one-line, path-naming messages for bad input and bad config."""

from __future__ import annotations


class FedReIDError(Exception):
    """Base class for errors fedreid reports to the user as one clear line."""


class DatasetError(FedReIDError, ValueError):
    """A dataset folder is missing, empty, wrongly laid out or holds a corrupt file."""


class ConfigError(FedReIDError, ValueError):
    """A configuration contradicts itself or names something that does not exist."""


class UpdateError(FedReIDError, ValueError):
    """A client reply is malformed (wrong keys, shapes, non-finite values, bad counts)."""
