"""Errors of the export tooling (offline; the node never imports this package)."""

from procvlm_ros.core.errors import ProcVlmError


class ExportError(ProcVlmError, RuntimeError):
    """An export, check or engine build cannot proceed; the message names the fix."""


class ValidationError(ExportError):
    """Exported outputs differ from the reference beyond tolerance (every failure listed)."""
