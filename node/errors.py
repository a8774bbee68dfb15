"""The one exception hierarchy of Radnode.

Each class says how the caller must react: reject for good, retry later, or fix
configuration. Messages name what was wrong and what to do about it.
"""


class RadnodeError(Exception):
    """Root of every error Radnode raises on purpose."""


class ConfigError(RadnodeError):
    """The configuration cannot be used; the message tells IT what to change."""


class InvalidInput(RadnodeError):
    """Bad input from a peer: reject it, do not retry."""


class TransientError(RadnodeError):
    """A condition that may pass (disk full, peer down): retry with backoff."""


class StorageFull(TransientError):
    """Free disk space is below the configured reserve."""


class ModelError(RadnodeError):
    """A model failed to load or to run."""


class DeliveryError(RadnodeError):
    """A result could not be delivered to a destination."""
