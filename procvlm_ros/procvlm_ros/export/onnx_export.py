"""
``procvlm-export onnx``: a Qwen3-VL or Qwen2.5-VL checkpoint -> vision + decoder ONNX graphs +
manifest.

The folder written is all a robot needs: ``vision.onnx`` and ``decoder.onnx`` (weights in
``.onnx.data`` files), ``manifest.json``, and the tokenizer, processor, chat-template and
generation files of the checkpoint. It is built in a sibling temporary folder and moved into
place at the end, so a failed export never leaves a half-written folder at ``--out``.

Graphs (``wrappers.py``): torch.onnx dynamo exporter, opset 18, only ``ai.onnx`` ops, named
dynamic axes ``frames``/``patches`` (vision) and ``seq``/``bank_rows``/``cache_slots`` (decoder).

The family comes from the checkpoint's ``config.json`` (:mod:`families`) and is written to the
manifest as ``model.family``. The families' graphs differ only in the vision inputs the host
computes (:mod:`family_inputs`) and in deepstack (Qwen3-VL's vision graph returns it and its
decoder adds it; Qwen2.5-VL has none). Families that do not fit this pattern (InternVL) are
refused with the family's reason before any weights are read.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
from dataclasses import dataclass
import json
import logging
import os
from pathlib import Path
import shutil
from typing import Any
import uuid
import warnings

from procvlm_ros.core.backends import families, greedy
from procvlm_ros.core.backends.family_inputs import VISION_INPUTS
from procvlm_ros.core.backends.manifest import (
    EXPORT_ID_KEY,
    ExportManifest,
    FORMAT,
    FORMAT_VERSION,
    READABLE_VERSIONS,
    sha256_file,
)
from procvlm_ros.core.errors import BackendUnavailableError
from procvlm_ros.export.errors import ExportError
from procvlm_ros.export.facts import (
    compute_limits,
    copy_processor_files,
    model_facts,
    preprocessing_facts,
    source_facts,
    token_facts,
    versions,
)

_LOG = logging.getLogger(__name__)
OPSET = 18
DEFAULT_IMAGE_SIZE = (640, 480)
PREFILL_CHUNK = 512
MAX_VERIFY_TOKENS = 64  # last token + up to 63 draft tokens per verify pass
VISION_OUTPUTS = {'qwen3_vl': ['image_embeds', 'deepstack'], 'qwen2_5_vl': ['image_embeds']}
DECODER_OUT = ['logits', 'next_token', 'new_kv']
_ONNX_DTYPES = {1: 'float32', 10: 'float16', 7: 'int64', 6: 'int32', 9: 'bool'}


@dataclass(frozen=True)
class OnnxExportOptions:
    """
    What to export and for which limits.

    :param model: Checkpoint directory or hub id.
    :param out: Export folder to create (replaced if it exists).
    :param dtype: ``fp32`` or ``fp16`` graph weights and activations.
    :param max_frames: Largest window the graphs/engines must take.
    :param image_size: Largest camera frame ``(width, height)``; sets tokens per frame.
    :param max_context: KV slots (prompt + generated); 0 derives it from the above.
    :param prefill_chunk: Most tokens per decoder call during prefill.
    :param cache_frames: Frames the vision cache holds; 0 = ``2 * max_frames``.
    :param max_verify_tokens: Most tokens of one draft-verifying decoder pass (last token +
        draft), recorded for the TensorRT verify profile.
    :param format_version: Export format; 1 (no per-position logits, no speculation) only to
        test that older folders still load.
    """

    model: str
    out: Path
    dtype: str = 'fp32'
    max_frames: int = 8
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE
    max_context: int = 0
    prefill_chunk: int = PREFILL_CHUNK
    cache_frames: int = 0
    max_verify_tokens: int = MAX_VERIFY_TOKENS
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.dtype not in ('fp32', 'fp16'):
            raise ExportError(f'--dtype must be fp32 or fp16, got {self.dtype!r}')
        if self.max_frames < 1 or min(self.image_size) < 1:
            raise ExportError('--max-frames and --image-size must be positive')
        if self.prefill_chunk < 1 or self.max_context < 0 or self.cache_frames < 0:
            raise ExportError('--max-context, --prefill-chunk and cache sizes must be >= 0')
        if not 2 <= self.max_verify_tokens <= self.prefill_chunk:
            raise ExportError(f'--max-verify-tokens must be 2..prefill_chunk '
                              f'({self.prefill_chunk}), got {self.max_verify_tokens}')
        if self.format_version not in READABLE_VERSIONS:
            raise ExportError(f'format_version must be one of {READABLE_VERSIONS}')


def parse_image_size(text: str) -> tuple[int, int]:
    """``'640x480'`` -> ``(640, 480)``."""
    try:
        w, h = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise ExportError(f'--image-size must look like 640x480, got {text!r}') from None
    return w, h


# ---------------------------------------------------------------- checkpoint


def vision_io(family: str) -> tuple[list[str], list[str]]:
    """Input and output names of a family's vision graph."""
    return (['pixel_values', *(v.name for v in VISION_INPUTS[family])],
            list(VISION_OUTPUTS[family]))


def exportable_family(config: dict[str, Any], where: str) -> families.ModelFamily:
    """
    The checkpoint's family if ``procvlm-export onnx`` supports it.

    :raises ExportError: For an unknown ``model_type`` (naming the exportable ones) or a family
        that cannot be exported (with the family's reason).
    """
    exportable = ', '.join(repr(t) for f in families.FAMILIES if f.exportable
                           for t in f.model_types)
    try:
        family = families.family_for_config(config, where)
    except BackendUnavailableError as e:
        raise ExportError(f'{where} holds a model of type {config.get("model_type")!r}; '
                          f'procvlm-export onnx exports {exportable}') from e
    if not family.exportable:
        raise ExportError(f'{where} is a {family.name} checkpoint, which procvlm-export onnx '
                          f'cannot export: {family.export_note} (it exports {exportable})')
    return family


def open_checkpoint(model: str) -> tuple[Path, dict[str, Any], families.ModelFamily]:
    """
    Resolve the checkpoint and read its family from ``config.json`` (no weights are read).

    :raises ExportError: Naming the problem: missing folder or config, or a family the exporter
        does not support.
    """
    from procvlm_ros.core.backends.transformers_backend import resolve_checkpoint
    try:
        path = resolve_checkpoint(model)
    except BackendUnavailableError as e:
        raise ExportError(f'cannot export {model!r}: {e}') from e
    cfg_path = path / 'config.json'
    try:
        config = json.loads(cfg_path.read_text(encoding='utf-8'))
    except (OSError, ValueError) as e:
        raise ExportError(f'cannot export {model!r}: {path} is not a transformers checkpoint '
                          f'(config.json missing or unreadable: {e})') from e
    if not isinstance(config, dict):
        raise ExportError(f'cannot export {model!r}: {cfg_path} does not hold a JSON object')
    return path, config, exportable_family(config, str(path))


# ---------------------------------------------------------------- export


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The dynamo exporter prints progress lines and many warnings; keep the CLI readable."""
    loggers = [logging.getLogger(n) for n in ('torch.onnx', 'onnxscript', 'onnx_ir')]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings(), open(os.devnull, 'w') as null, \
            contextlib.redirect_stdout(null):
        warnings.simplefilter('ignore')
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def export_vision(model: Any, path: Path, grid: tuple[int, int], dtype: Any) -> None:
    """Export the family's vision wrapper with dynamic ``frames`` and ``patches``."""
    if model.config.model_type == 'qwen2_5_vl':
        _export_vision_qwen25(model, path, grid, dtype)
        return
    import torch
    from torch.export import Dim

    from procvlm_ros.export.wrappers import wrapper_classes
    vision_cls, _, _ = wrapper_classes()
    wrapper = vision_cls(model.model.visual).eval()
    gh, gw = grid
    patches = gh * gw
    frames = 3 if patches // 4 == 2 else 2  # distinct example sizes keep the dims apart
    side = wrapper.visual.num_grid_per_side
    args = (torch.randn(frames, patches, model_facts(model.config)['patch_dim'], dtype=dtype),
            torch.randint(0, side * side, (patches, 4)), torch.rand(patches, 4),
            torch.randint(0, max(gh, gw), (patches, 2)))
    frames_dim, tokens_dim = Dim('frames', min=1, max=4096), Dim('tokens', min=1, max=1 << 16)
    patches_dim = 4 * tokens_dim
    shapes = {'pixel_values': {0: frames_dim, 1: patches_dim}, 'interp_indices': {0: patches_dim},
              'interp_weights': {0: patches_dim}, 'rope_pos': {0: patches_dim}}
    with _quiet(), torch.no_grad():
        torch.onnx.export(wrapper, args, str(path), dynamo=True, opset_version=OPSET,
                          input_names=vision_io('qwen3_vl')[0],
                          output_names=vision_io('qwen3_vl')[1], dynamic_shapes=shapes,
                          optimize=True, external_data=True, verbose=False)


def _export_vision_qwen25(model: Any, path: Path, grid: tuple[int, int], dtype: Any) -> None:
    """Qwen2.5-VL: window layout and rotary positions of the grid are inputs (host-computed)."""
    import torch
    from torch.export import Dim

    from procvlm_ros.core.backends import qwen25vl_inputs as q25
    from procvlm_ros.export.wrappers import qwen25_wrapper_classes
    vision_cls, _ = qwen25_wrapper_classes()
    wrapper = vision_cls(model.model.visual).eval()
    cfg = model.config.vision_config
    gh, gw = grid
    patches = gh * gw
    frames = 3 if patches // 4 == 2 else 2  # distinct example sizes keep the dims apart
    geometry = q25.vision_geometry(gh, gw, int(cfg.spatial_merge_size), int(cfg.window_size),
                                   int(cfg.patch_size))
    args = (torch.randn(frames, patches, model_facts(model.config)['patch_dim'], dtype=dtype),
            *(torch.from_numpy(g) for g in geometry))
    frames_dim, tokens_dim = Dim('frames', min=1, max=4096), Dim('tokens', min=1, max=1 << 16)
    patches_dim = 4 * tokens_dim
    shapes = {'pixel_values': {0: frames_dim, 1: patches_dim}, 'rope_pos': {0: patches_dim},
              'window_index': {0: tokens_dim}, 'reverse_index': {0: tokens_dim},
              'window_ids': {0: patches_dim}}
    names = vision_io('qwen2_5_vl')
    with _quiet(), torch.no_grad():
        torch.onnx.export(wrapper, args, str(path), dynamo=True, opset_version=OPSET,
                          input_names=names[0], output_names=names[1], dynamic_shapes=shapes,
                          optimize=True, external_data=True, verbose=False)


def decoder_input_names(layers: int, format_version: int = FORMAT_VERSION,
                        deepstack: bool = True) -> list[str]:
    names = (['input_ids', 'visual_index', 'image_embeds'] + (['deepstack'] if deepstack else [])
             + ['position_ids', 'past_length'] + (['logit_index'] if format_version >= 2 else []))
    return names + [f'past_{kind}_{i}' for i in range(layers) for kind in ('key', 'value')]


def export_decoder(model: Any, path: Path, dtype: Any,
                   format_version: int = FORMAT_VERSION) -> None:
    """
    Export the decoder with dynamic ``seq``, ``bank_rows``, ``cache_slots`` and (format 2)
    ``heads``, the chunk positions whose logits and argmax are returned.
    """
    import torch
    from torch.export import Dim

    from procvlm_ros.export.wrappers import qwen25_wrapper_classes, wrapper_classes
    _, decoder_cls, decoder_v1_cls = wrapper_classes()
    deepstack = model.config.model_type != 'qwen2_5_vl'
    if deepstack:
        wrapper = (decoder_cls if format_version >= 2 else decoder_v1_cls)(model).eval()
    elif format_version >= 2:
        wrapper = qwen25_wrapper_classes()[1](model).eval()
    else:  # format 1 exists only to test that old Qwen3-VL folders still load
        raise ExportError('format_version 1 is a Qwen3-VL compatibility format; export '
                          f'{model.config.model_type} with format {FORMAT_VERSION}')
    layers, hidden = len(wrapper.layers), model.config.text_config.hidden_size
    seq, rows, slots, heads = 5, 11, 13, 3
    cache = tuple(torch.zeros(1, wrapper.num_kv, slots, wrapper.head_dim, dtype=dtype)
                  for _ in range(2 * layers))
    seq_dim, rows_dim = Dim('seq', min=1, max=1 << 20), Dim('bank_rows', min=1, max=1 << 24)
    slots_dim = Dim('cache_slots', min=1, max=1 << 20)
    args: tuple[Any, ...] = (torch.randint(0, 1000, (1, seq)),
                             torch.zeros(1, seq, dtype=torch.long),
                             torch.randn(rows, hidden, dtype=dtype))
    shapes: tuple[Any, ...] = ({1: seq_dim}, {1: seq_dim}, {0: rows_dim})
    if deepstack:
        args += (torch.randn(wrapper.num_deepstack, rows, hidden, dtype=dtype),)
        shapes += ({1: rows_dim},)
    args += (torch.randint(0, 20, (3, 1, seq)), torch.tensor([3]))
    shapes += ({2: seq_dim}, None)
    if format_version >= 2:
        args += (torch.arange(seq - heads, seq),)
        shapes += ({0: Dim('heads', min=1, max=1 << 20)},)
    args += (cache,)
    shapes += (tuple({2: slots_dim} for _ in range(2 * layers)),)
    with _quiet(), torch.no_grad():
        torch.onnx.export(wrapper, args, str(path), dynamo=True, opset_version=OPSET,
                          input_names=decoder_input_names(layers, format_version, deepstack),
                          output_names=DECODER_OUT, dynamic_shapes=shapes, optimize=True,
                          external_data=True, verbose=False)


def _dims(value_info: Any) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def finish_graph(path: Path, export_id: str,
                 rename: dict[str, dict[int, str]]) -> dict[str, Any]:
    """Stamp the export id, give output axes readable names, return the manifest entry."""
    import onnx
    proto = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p for p in proto.metadata_props}
    if EXPORT_ID_KEY in meta:
        meta[EXPORT_ID_KEY].value = export_id
    else:
        proto.metadata_props.add(key=EXPORT_ID_KEY, value=export_id)
    for out in proto.graph.output:
        for axis, name in rename.get(out.name, {}).items():
            out.type.tensor_type.shape.dim[axis].dim_param = name
    onnx.save(proto, str(path))
    files = [path] + sorted(p for p in path.parent.glob(path.name + '*') if p != path)

    def io(values: Any) -> list[dict[str, Any]]:
        return [{'name': v.name, 'dtype': _ONNX_DTYPES.get(v.type.tensor_type.elem_type, '?'),
                 'shape': _dims(v)} for v in values]

    return {'file': path.name,
            'files': {p.name: {'size': p.stat().st_size, 'sha256': sha256_file(p)}
                      for p in files},
            'inputs': io(proto.graph.input), 'outputs': io(proto.graph.output),
            'nodes': len(proto.graph.node),
            'ops': sorted({n.op_type for n in proto.graph.node})}


def _move_into_place(tmp: Path, out: Path) -> None:
    old = out.with_name(f'.{out.name}.old-{os.getpid()}')
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def export_onnx(opts: OnnxExportOptions, show_progress: bool = True) -> ExportManifest:
    """
    Export a checkpoint; return the manifest of the finished folder.

    :raises ExportError: If the checkpoint's family cannot be exported (checked before any
        weights are read), or the checkpoint cannot be loaded or exported.
    """
    from tqdm import tqdm

    from procvlm_ros.core.backends.hf_processor import load_processor
    from procvlm_ros.core.backends.transformers_backend import load_model
    steps = tqdm(total=6, desc='procvlm-export onnx', unit='step', disable=not show_progress)

    def step(text: str) -> None:
        steps.set_postfix_str(text)
        _LOG.info('%s', text)

    step('checking checkpoint')
    path, _, family = open_checkpoint(opts.model)
    if opts.format_version < 2 and family.name != families.DEFAULT_FAMILY:
        raise ExportError(f'format_version {opts.format_version} is a Qwen3-VL compatibility '
                          f'format; export {family.name} with format {FORMAT_VERSION}')
    try:
        processor, route = load_processor(path)
    except BackendUnavailableError as e:
        raise ExportError(f'cannot load the processor of {path}: {e}') from e
    limits = compute_limits(opts, processor.image_processor)
    if opts.format_version >= 2:
        limits['max_verify_tokens'] = min(opts.max_verify_tokens, limits['prefill_chunk'])
    steps.update()
    step(f'loading weights ({opts.dtype})')
    import torch
    dtype = torch.float16 if opts.dtype == 'fp16' else torch.float32
    try:
        model = load_model(path, 'cpu', dtype, 'eager')
    except BackendUnavailableError as e:
        raise ExportError(str(e)) from e
    if getattr(model.config.text_config, 'use_sliding_window', False):
        raise ExportError(f'{path} uses sliding-window attention in its language model '
                          '(use_sliding_window); the exported decoder attends over the whole '
                          'cache, so it would not match. Serve it with the transformers backend')
    steps.update()
    out = Path(opts.out).expanduser().resolve()
    tmp = out.with_name(f'.{out.name}.partial-{os.getpid()}')
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    export_id = uuid.uuid4().hex
    try:
        graphs = _export_graphs(model, tmp, limits, dtype, export_id, step, steps,
                                opts.format_version)
        step('copying tokenizer/processor files and hashing the checkpoint')
        files = copy_processor_files(path, tmp)
        generation = json.loads((path / 'generation_config.json').read_text()) if (
            path / 'generation_config.json').is_file() else {}
        data = {
            'format': FORMAT, 'format_version': opts.format_version, 'export_id': export_id,
            'dtype': opts.dtype, 'opset': OPSET,
            'exporter': {'tool': 'torch.onnx.export(dynamo=True)', **versions()},
            'source': source_facts(opts.model, path, str(model.config.model_type)),
            'limits': limits,
            'model': model_facts(model.config),
            'tokens': token_facts(model.config, generation, processor.tokenizer),
            'generation': {k: generation[k] for k in greedy.GENERATION_FIELDS
                           if k in generation},
            'preprocessing': preprocessing_facts(processor, route),
            'graphs': graphs, 'files': files}
        manifest = ExportManifest(data, tmp)
        manifest.write()
        _move_into_place(tmp, out)
        steps.update()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        steps.close()
    return ExportManifest.read(out)


def _export_graphs(model: Any, tmp: Path, limits: dict[str, Any], dtype: Any, export_id: str,
                   step: Any, steps: Any, format_version: int) -> dict[str, Any]:
    grid = tuple(limits['frame_grid'])
    step('exporting vision graph')
    try:
        export_vision(model, tmp / 'vision.onnx', grid, dtype)
    except Exception as e:  # exporter errors are long; keep the head
        raise ExportError(f'vision graph export failed: {type(e).__name__}: '
                          f'{str(e)[:500]}') from e
    steps.update()
    step('exporting decoder graph')
    try:
        export_decoder(model, tmp / 'decoder.onnx', dtype, format_version)
    except Exception as e:  # see above
        raise ExportError(f'decoder graph export failed: {type(e).__name__}: '
                          f'{str(e)[:500]}') from e
    steps.update()
    vision_axes = {'image_embeds': {0: 'frames', 1: 'tokens'}}
    if model_facts(model.config)['num_deepstack']:
        vision_axes['deepstack'] = {1: 'frames', 2: 'tokens'}
    return {
        'vision': finish_graph(tmp / 'vision.onnx', export_id, vision_axes),
        'decoder': finish_graph(tmp / 'decoder.onnx', export_id, {
            'new_kv': {4: 'seq'},
            **({'logits': {0: 'heads'}, 'next_token': {0: 'heads'}} if format_version >= 2
               else {})}),
    }
