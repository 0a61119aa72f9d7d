"""
TensorRT engine cache records: what an engine was built from and for (``anchors.md`` idea 4).

A serialized engine only runs with the TensorRT version and GPU it was built with. Each engine
is recorded in ``engines.json`` next to it with the fields of its cache key: SHA-256 of the ONNX
files, export id, TensorRT version, GPU name, compute capability, L4T release (Jetson),
precision, optimisation profiles and build options. The builder reuses an engine only when
every field matches; the backend refuses a mismatching engine and names each differing field.

No TensorRT import at module level: :func:`detect_platform` imports it when called.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
import hashlib
import json
from pathlib import Path
from typing import Any

from procvlm_ros.core.backends.manifest import atomic_write_json
from procvlm_ros.core.errors import BackendUnavailableError

ENGINE_INDEX = 'engines.json'
INDEX_FORMAT = 'procvlm-trt-engines'
INDEX_VERSION = 1
_L4T_RELEASE = Path('/etc/nv_tegra_release')
# Fields that must equal the running machine's for an engine to be usable.
PLATFORM_FIELDS = ('tensorrt_version', 'gpu_name', 'compute_capability', 'l4t_release')


@dataclass(frozen=True)
class Platform:
    """The machine an engine is built on or run on."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    l4t_release: str = ''


def l4t_release(path: Path = _L4T_RELEASE) -> str:
    """First line of ``/etc/nv_tegra_release`` on a Jetson (JetPack's L4T), else ''."""
    try:
        return path.read_text(encoding='utf-8').splitlines()[0].strip()
    except (OSError, IndexError):
        return ''


def detect_platform(device_id: int = 0) -> Platform:
    """
    TensorRT version and GPU of this machine.

    :raises BackendUnavailableError: If TensorRT or a CUDA device (through torch) is missing.
    """
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendUnavailableError(
            'TensorRT is not importable here: on a Jetson it comes with JetPack '
            "(python3-libnvinfer); on x86 install NVIDIA's tensorrt wheels from NVIDIA's "
            f'package index ({e})') from e
    try:
        import torch
    except ImportError as e:
        raise BackendUnavailableError('the TensorRT path needs torch with CUDA for its device '
                                      'buffers') from e
    if not torch.cuda.is_available():
        raise BackendUnavailableError('TensorRT needs a CUDA GPU; torch sees none')
    major, minor = torch.cuda.get_device_capability(device_id)
    return Platform(str(trt.__version__), str(torch.cuda.get_device_name(device_id)),
                    f'{major}.{minor}', l4t_release())


def engine_key(record: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of everything an engine depends on."""
    fields = {k: record[k] for k in ('onnx_sha256', 'export_id', 'precision', 'profiles',
                                     'options', 'platform')}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def make_record(*, graph: str, onnx_sha256: Mapping[str, str], export_id: str, precision: str,
                profiles: list[dict[str, Any]], options: Mapping[str, Any],
                platform: Platform) -> dict[str, Any]:
    """Engine record without file facts; ``key`` included."""
    record = {'graph': graph, 'onnx_sha256': dict(onnx_sha256), 'export_id': export_id,
              'precision': precision, 'profiles': profiles, 'options': dict(options),
              'platform': asdict(platform)}
    record['key'] = engine_key(record)
    return record


def record_mismatches(found: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """
    Human-readable differences between an engine's record and the wanted one.

    :returns: One line per differing field (empty when the engine is reusable).
    """
    problems = []
    for name in PLATFORM_FIELDS:
        have = found.get('platform', {}).get(name)
        want = expected['platform'].get(name)
        if have != want:
            problems.append(f'{name}: engine built for {have!r}, this machine has {want!r}')
    for name in ('export_id', 'precision', 'onnx_sha256', 'profiles', 'options'):
        if found.get(name) != expected.get(name):
            problems.append(f'{name}: engine has {_short(found.get(name))}, wanted '
                            f'{_short(expected.get(name))}')
    return problems


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + '...'


def read_index(folder: Path) -> dict[str, Any]:
    """
    Read ``engines.json``.

    :raises BackendUnavailableError: If it is missing or not an engine index.
    """
    path = folder / ENGINE_INDEX
    if not path.is_file():
        raise BackendUnavailableError(
            f'{folder} holds no TensorRT engines ({ENGINE_INDEX} missing); build them on this '
            f'machine with `procvlm-export trt --onnx EXPORT_DIR --out {folder}`')
    try:
        data = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError) as e:
        raise BackendUnavailableError(f'{path} is not readable JSON: {e}') from e
    if data.get('format') != INDEX_FORMAT or data.get('format_version') != INDEX_VERSION:
        raise BackendUnavailableError(f'{path} is not a version-{INDEX_VERSION} engine index')
    return dict(data)


def write_index(folder: Path, engines: Mapping[str, Any], export_id: str) -> None:
    atomic_write_json(folder / ENGINE_INDEX, {
        'format': INDEX_FORMAT, 'format_version': INDEX_VERSION, 'export_id': export_id,
        'engines': dict(engines)})


def check_engines(index: Mapping[str, Any], folder: Path, export_id: str,
                  platform: Platform) -> None:
    """
    Refuse engines that are missing, truncated, from another export or another machine.

    :raises BackendUnavailableError: Listing every problem and the rebuild command.
    """
    problems = []
    for graph in ('vision', 'decoder'):
        record = index.get('engines', {}).get(graph)
        if record is None:
            problems.append(f'{graph}: no engine recorded')
            continue
        path = folder / str(record.get('file', ''))
        if not path.is_file() or path.stat().st_size != record.get('size'):
            problems.append(f'{graph}: engine file {path.name} is missing or truncated')
        if record.get('export_id') != export_id:
            problems.append(f'{graph}: engine was built from export {record.get("export_id")!r}'
                            f', manifest.json describes {export_id!r}')
        expected = dict(record, platform=asdict(platform))
        problems += [f'{graph}: {p}' for p in record_mismatches(record, expected)]
    if problems:
        raise BackendUnavailableError(
            f'TensorRT engines in {folder} cannot run here:\n- ' + '\n- '.join(problems)
            + f'\nRebuild on this machine: procvlm-export trt --onnx EXPORT_DIR --out {folder}')
