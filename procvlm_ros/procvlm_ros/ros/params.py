"""Declare ROS parameters from the config dataclasses (one schema, descriptors with ranges)."""

from __future__ import annotations

from dataclasses import fields, replace
import sys
from typing import Any, TypeVar

from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
    SetParametersResult,
)
from rclpy.exceptions import ParameterException
from rclpy.node import Node
from rclpy.parameter import Parameter

from procvlm_ros.core.errors import ConfigError

_T = TypeVar('_T')
_INT_MAX = 2**63 - 1
_TYPES = {bool: (ParameterType.PARAMETER_BOOL, Parameter.Type.BOOL),
          int: (ParameterType.PARAMETER_INTEGER, Parameter.Type.INTEGER),
          float: (ParameterType.PARAMETER_DOUBLE, Parameter.Type.DOUBLE),
          str: (ParameterType.PARAMETER_STRING, Parameter.Type.STRING),
          tuple: (ParameterType.PARAMETER_STRING_ARRAY, Parameter.Type.STRING_ARRAY)}


def descriptor_for(f: Any) -> ParameterDescriptor:
    """Build a descriptor (type, range, choices, read-only) from a dataclass field."""
    meta = f.metadata
    ptype = _TYPES[type(f.default)][0]
    d = ParameterDescriptor(name=f.name, type=ptype, description=meta['description'],
                            read_only=meta['read_only'])
    lo, hi = meta['range']
    if ptype == ParameterType.PARAMETER_INTEGER and (lo is not None or hi is not None):
        d.integer_range = [IntegerRange(from_value=int(lo if lo is not None else -_INT_MAX),
                                        to_value=int(hi if hi is not None else _INT_MAX), step=0)]
    if ptype == ParameterType.PARAMETER_DOUBLE and (lo is not None or hi is not None):
        big = sys.float_info.max
        d.floating_point_range = [FloatingPointRange(
            from_value=float(lo if lo is not None else -big),
            to_value=float(hi if hi is not None else big), step=0.0)]
    if meta['choices']:
        d.additional_constraints = 'one of: ' + ', '.join(meta['choices'])
    return d


def declare_config(node: Node, cls: type[_T], overrides: dict[str, Any] | None = None) -> _T:
    """Declare every field of ``cls`` on ``node`` and build the validated config from them."""
    values = {}
    for f in fields(cls):  # type: ignore[arg-type]
        default = (overrides or {}).get(f.name, f.default)
        try:
            values[f.name] = _declare(node, f, default)
        except ParameterException as e:
            # Out of range or wrong type in a params file / -p: say which and why.
            raise ConfigError(f'parameter {f.name!r}: {e} ({descriptor_for(f).description})'
                              ) from e
    return cls(**values)


def _declare(node: Node, f: Any, default: Any) -> Any:
    if isinstance(default, tuple):
        # An empty list has no ROS type; declare statically typed, unset means empty.
        node.declare_parameter(f.name, list(default) or Parameter.Type.STRING_ARRAY,
                               descriptor_for(f))
        param = node.get_parameter_or(f.name, Parameter(f.name, value=list(default)))
        return tuple(param.value or ())
    return node.declare_parameter(f.name, default, descriptor_for(f)).value


def validate_update(config: Any, params: list[Parameter]) -> tuple[Any, SetParametersResult]:
    """Apply parameter changes to ``config``; reject them with the dataclass's reason."""
    names = {f.name for f in fields(config)}
    changes = {p.name: p.value for p in params if p.name in names}
    if not changes:
        return config, SetParametersResult(successful=True)
    try:
        return replace(config, **changes), SetParametersResult(successful=True)
    except (ConfigError, TypeError) as e:
        return config, SetParametersResult(successful=False, reason=str(e))
