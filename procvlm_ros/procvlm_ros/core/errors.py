"""Exceptions of the ROS-free core; the node turns them into a published status."""


class ProcVlmError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(ProcVlmError, ValueError):
    """A parameter or argument has an invalid value."""


class ImageError(ProcVlmError, ValueError):
    """An image could not be converted (bad size, step, encoding or compressed data)."""


class BackendError(ProcVlmError, RuntimeError):
    """Inference failed inside a backend."""


class BackendUnavailableError(BackendError):
    """A backend cannot be created: its runtime is missing or its model cannot be loaded."""


class MediaError(ProcVlmError, RuntimeError):
    """A video or bag cannot be opened, decoded or written, or lacks the requested stream/topic."""
