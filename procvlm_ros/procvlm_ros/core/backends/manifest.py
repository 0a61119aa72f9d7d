"""
``manifest.json`` of a ``procvlm-export`` folder: read, write and verify (numpy-free, torch-free).

The manifest makes an export folder self-describing for the robot: source checkpoint and weight
hashes, exporter and library versions, opset, dtype, the I/O of every graph, the limits the
graphs and engines were sized for, the model family (``model.family``; absent in exports made
before Qwen2.5-VL support, which are Qwen3-VL), preprocessing settings, special token ids, eos
and the greedy settings of ``generation_config.json``. Backends refuse a folder whose manifest
they do not understand or whose graph files do not match it (truncated, replaced, or from
another export).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
import hashlib
import json
import os
from pathlib import Path
import tempfile
from typing import Any

from procvlm_ros.core.backends.families import DEFAULT_FAMILY
from procvlm_ros.core.errors import BackendUnavailableError

MANIFEST_NAME = 'manifest.json'
FORMAT = 'procvlm-export'
# 2: the decoder takes ``logit_index`` and returns logits/argmax of those chunk positions
# (draft verification, issue 11); 1: logits of the last position only (no speculation).
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
GRAPHS = ('vision', 'decoder')
# Key of the export id in each ONNX graph's metadata_props (and in TensorRT engine sidecars).
EXPORT_ID_KEY = 'procvlm_export_id'
_CHUNK = 1 << 22


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with path.open('rb') as f:
        for block in iter(lambda: f.read(_CHUNK), b''):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; exported files are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write pretty JSON atomically."""
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=False) + '\n').encode())


class ExportManifest:
    """
    A parsed ``manifest.json`` with typed accessors for what the backends need.

    :param data: The JSON object.
    :param folder: The export folder it was read from.
    """

    def __init__(self, data: dict[str, Any], folder: Path) -> None:
        self.data = data
        self.folder = folder

    # ------------------------------------------------------------ reading
    @classmethod
    def read(cls, folder: str | Path) -> ExportManifest:
        """
        Read and sanity-check ``<folder>/manifest.json``.

        :raises BackendUnavailableError: If the folder or manifest is missing, unreadable, of
            another format or version, or lacks required sections.
        """
        folder = Path(folder).expanduser()
        path = folder / MANIFEST_NAME
        if not folder.is_dir():
            raise BackendUnavailableError(f'export folder {folder} does not exist')
        if not path.is_file():
            raise BackendUnavailableError(
                f'{folder} is not a procvlm-export folder: {MANIFEST_NAME} is missing. Create '
                f'one with `procvlm-export onnx --model CHECKPOINT --out {folder}`')
        try:
            data = json.loads(path.read_text(encoding='utf-8'))
        except (OSError, ValueError) as e:
            raise BackendUnavailableError(f'{path} is not readable JSON: {e}') from e
        if not isinstance(data, dict) or data.get('format') != FORMAT:
            raise BackendUnavailableError(f'{path} is not a {FORMAT} manifest')
        if data.get('format_version') not in READABLE_VERSIONS:
            raise BackendUnavailableError(
                f'{path} has format_version {data.get("format_version")!r}; this procvlm_ros '
                f'reads versions {", ".join(map(str, READABLE_VERSIONS))}: re-export with this '
                'version')
        missing = [k for k in ('export_id', 'dtype', 'graphs', 'limits', 'model', 'tokens')
                   if k not in data]
        if missing or any(g not in data['graphs'] for g in GRAPHS):
            raise BackendUnavailableError(
                f'{path} is incomplete (missing {missing or "graphs"}); re-export')
        return cls(data, folder)

    def write(self) -> None:
        """Write the manifest atomically into its folder."""
        atomic_write_json(self.folder / MANIFEST_NAME, self.data)

    @property
    def export_id(self) -> str:
        return str(self.data['export_id'])

    @property
    def format_version(self) -> int:
        return int(self.data['format_version'])

    @property
    def verifies_drafts(self) -> bool:
        """Whether the decoder returns every chunk position's argmax (format 2 and later)."""
        return self.format_version >= 2

    @property
    def dtype(self) -> str:
        """Graph float dtype: ``fp32`` or ``fp16``."""
        return str(self.data['dtype'])

    @property
    def limits(self) -> dict[str, Any]:
        return dict(self.data['limits'])

    @property
    def model(self) -> dict[str, Any]:
        return dict(self.data['model'])

    @property
    def family(self) -> str:
        """Model family of the graphs (``model.family``; manifests without it are Qwen3-VL)."""
        return str(self.data['model'].get('family') or DEFAULT_FAMILY)

    @property
    def tokens(self) -> dict[str, Any]:
        return dict(self.data['tokens'])

    @property
    def generation(self) -> dict[str, Any]:
        return dict(self.data.get('generation') or {})

    def graph(self, name: str) -> dict[str, Any]:
        """Graph entry: ``file``, ``files`` (name -> size, sha256), ``inputs``, ``outputs``."""
        return dict(self.data['graphs'][name])

    def graph_path(self, name: str) -> Path:
        return self.folder / str(self.graph(name)['file'])

    def graph_files(self, name: str) -> Iterator[tuple[Path, dict[str, Any]]]:
        """Each file of a graph (the .onnx and its external data) with its recorded facts."""
        for fname, facts in self.graph(name)['files'].items():
            yield self.folder / fname, dict(facts)

    # ------------------------------------------------------------ verification
    def verify_files(self, *, hashes: bool = False, names: tuple[str, ...] = GRAPHS) -> None:
        """
        Check that every graph file exists with the recorded size (and SHA-256 if ``hashes``).

        Collects every mismatch before raising, so one error lists all of them.

        :raises BackendUnavailableError: Naming each missing, truncated or altered file.
        """
        problems = []
        for name in names:
            for path, facts in self.graph_files(name):
                if not path.is_file():
                    problems.append(f'{name} graph: {path.name} is missing')
                    continue
                size = path.stat().st_size
                if size != facts['size']:
                    problems.append(f'{name} graph: {path.name} has {size} bytes, the manifest '
                                    f'records {facts["size"]} (truncated, or from another '
                                    'export)')
                elif hashes and sha256_file(path) != facts['sha256']:
                    problems.append(f'{name} graph: {path.name} content differs from the '
                                    'manifest (SHA-256 mismatch: replaced or from another '
                                    'export)')
        if problems:
            raise BackendUnavailableError(
                f'export folder {self.folder} does not match its manifest '
                f'(export {self.export_id}):\n- ' + '\n- '.join(problems)
                + '\nRe-export the folder with procvlm-export onnx.')

    def verify_graph_metadata(self, name: str, metadata: Mapping[str, str]) -> None:
        """
        Check the export id stamped into a loaded graph's metadata.

        :raises BackendUnavailableError: If the graph belongs to another export.
        """
        found = metadata.get(EXPORT_ID_KEY)
        if found != self.export_id:
            raise BackendUnavailableError(
                f'{name} graph {self.graph_path(name).name} was written by export {found!r} '
                f'but {MANIFEST_NAME} describes export {self.export_id!r}: the manifest comes '
                'from another export. Re-export the folder, or copy the matching manifest')

    def verify_io(self, name: str, inputs: Mapping[str, str], outputs: Mapping[str, str]) -> None:
        """
        Check a runtime's tensor names and element types against the manifest.

        :param inputs: Input name -> dtype name as the runtime reports them.
        :param outputs: Output name -> dtype name.
        :raises BackendUnavailableError: Listing every missing or retyped tensor.
        """
        spec = self.graph(name)
        problems = []
        for kind, found in (('input', inputs), ('output', outputs)):
            for tensor in spec[f'{kind}s']:
                got = found.get(tensor['name'])
                if got is None:
                    problems.append(f'{kind} {tensor["name"]!r} is missing')
                elif got != tensor['dtype']:
                    problems.append(f'{kind} {tensor["name"]!r} is {got}, manifest says '
                                    f'{tensor["dtype"]}')
        if problems:
            raise BackendUnavailableError(
                f'{name} graph does not match {MANIFEST_NAME}: ' + '; '.join(problems))
