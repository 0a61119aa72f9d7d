"""
Command-line options derived from config dataclass fields (one schema for node and CLIs).

Each field becomes an option whose type, default, choices and help come from the field
(``metadata`` as written by ``core.config.param``), so a field added to a config later is an
option at once. ``Override`` keeps an established name or default where it differs (the
official ProcVLM flags).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, Field, fields, MISSING
import types
import typing
from typing import Any

KEEP: Any = object()  # Override field left as the dataclass says


@dataclass(frozen=True)
class Override:
    """Where an option departs from its field: another name, default or choices."""

    flag: str | None = None  # option name without dashes, e.g. 'model_path' for 'model'
    default: Any = KEEP
    choices: Any = KEEP  # a tuple, or None to accept any value (aliases resolved later)
    help: str | None = None  # replaces the field description


@dataclass(frozen=True)
class FieldOption:
    """One derived option: the field it sets and the argparse destination holding it."""

    field: str
    flag: str
    dest: str
    default: Any


def _help(f: Field[Any], override: Override, default: Any, choices: Any) -> str:
    text = override.help or f.metadata.get('description', '')
    lo, hi = f.metadata.get('range', (None, None))
    extra = []
    if choices:
        extra.append('one of ' + ', '.join(map(str, choices)))
    if lo is not None or hi is not None:
        extra.append(f'range {"" if lo is None else lo}..{"" if hi is None else hi}')
    extra.append('required' if default is MISSING else f'default: {default!r}')
    return f'{text} ({"; ".join(extra)})'.strip().replace('%', '%%')


def add_field_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
                      *, only: Iterable[str] | None = None, exclude: Iterable[str] = (),
                      overrides: Mapping[str, Override] | None = None,
                      dashes: bool = False) -> list[FieldOption]:
    """
    Add one option per field of dataclass ``cls``.

    :param only: Fields to add (default: all); ``exclude`` removes fields from that set.
    :param overrides: Per field name, the departures from the field (name, default, choices).
    :param dashes: ``--snake-case-with-dashes`` flags instead of ``--snake_case``.
    :returns: What was added, for :func:`field_values`.
    :raises ValueError: An unknown field name in ``only``, ``exclude`` or ``overrides``.
    """
    overrides = dict(overrides or {})
    by_name = {f.name: f for f in fields(cls)}
    wanted = list(by_name) if only is None else list(only)
    unknown = (set(wanted) | set(exclude) | set(overrides)) - set(by_name)
    if unknown:
        raise ValueError(f'{cls.__name__} has no field(s) {sorted(unknown)}')
    hints = typing.get_type_hints(cls)
    added = []
    for name in wanted:
        if name in exclude:
            continue
        f, override = by_name[name], overrides.get(name, Override())
        added.append(_add_one(parser, f, hints[name], override, dashes))
    return added


def _add_one(parser: Any, f: Field[Any], kind: Any, override: Override,
             dashes: bool) -> FieldOption:
    flag = override.flag or f.name
    dest = flag
    if override.default is not KEEP:
        default = override.default
    elif f.default is not MISSING:
        default = f.default
    elif f.default_factory is not MISSING:
        default = f.default_factory()
    else:
        default = MISSING
    choices = f.metadata.get('choices') if override.choices is KEEP else override.choices
    kwargs: dict[str, Any] = {'dest': dest}
    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # `int | None`: int
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    if kind is bool:
        # --name, --name on|off (also true/false, 1/0); an on-by-default one also has --no_name.
        text = _help(f, override, MISSING, None).removesuffix(' (required)')
        name = flag.replace('_', '-') if dashes else flag
        if default:
            parser.add_argument('--no_' + name if not dashes else '--no-' + name, dest=dest,
                                action='store_false', default=default,
                                help=f'Same as --{name} off.')
        kwargs.update(type=_on_off, nargs='?', const=True, default=default,
                      metavar='on|off', help=f'{text} (default: {"on" if default else "off"})')
        parser.add_argument('--' + name, **kwargs)
        return FieldOption(field=f.name, flag=flag, dest=dest, default=default)
    else:
        sequence = typing.get_origin(kind) is tuple
        kwargs.update(type=typing.get_args(kind)[0] if sequence else kind, choices=choices)
        if sequence:
            kwargs['nargs'] = '*'
        if default is MISSING:
            kwargs['required'] = True
        else:
            kwargs['default'] = default
        kwargs['help'] = _help(f, override, default, choices)
    parser.add_argument('--' + (flag.replace('_', '-') if dashes else flag), **kwargs)
    return FieldOption(field=f.name, flag=flag, dest=dest, default=default)


def _on_off(text: str) -> bool:
    value = {'on': True, 'true': True, '1': True, 'yes': True,
             'off': False, 'false': False, '0': False, 'no': False}.get(text.strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f'expected on or off, got {text!r}')
    return value


def field_values(args: argparse.Namespace, options: Iterable[FieldOption]) -> dict[str, Any]:
    """Field name -> parsed value (sequences as tuples, as the frozen configs store them)."""
    out = {}
    for opt in options:
        value = getattr(args, opt.dest)
        out[opt.field] = tuple(value) if isinstance(value, list) else value
    return out
