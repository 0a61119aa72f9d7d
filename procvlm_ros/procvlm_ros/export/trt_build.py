"""
``procvlm-export trt``: build TensorRT engines from an export folder, on the machine that runs
them (TensorRT 10 Python API).

**Not run in this repository's CI**: TensorRT is not installable from PyPI and the CI machine
has no GPU. The code is written against the TensorRT 10 API (``STRONGLY_TYPED`` network,
``OnnxParser.parse_from_file``, ``set_memory_pool_limit``, optimisation profiles,
``build_serialized_network``); the pieces that need no TensorRT (profiles, precision checks,
cache keys and stale-engine detection, the LM-head split) are tested on CPU. See
``docs/export.md`` for the commands that verify it on a Jetson and on a desktop GPU.

- Precision comes from the ONNX types (strongly typed network): ``fp16`` needs an
  ``--dtype fp16`` export; ``int8`` needs explicit Q/DQ nodes (e.g. from NVIDIA ModelOpt),
  which ``procvlm-export onnx`` does not produce, so it is refused with that reason.
- Profiles come from the manifest: vision ``frames`` 1..max_frames at the export's patch count,
  with the grid-dependent inputs of the export's model family (:mod:`family_inputs`: Qwen3-VL
  position-table taps, Qwen2.5-VL window layout) and ``deepstack`` only where the family has it;
  decoder profile 0 = prefill (``seq`` 1..prefill_chunk, logits of one position), profile 1 =
  decode (``seq`` 1), and for format-2 exports profile 2 = draft verification (``seq`` and
  ``logit_index`` 2..max_verify_tokens, tuned at 17), all with ``cache_slots`` 1..max_context
  and the fixed feature-bank size.
- Engines are cached under a key of ONNX hash, export id, TensorRT version, GPU name, compute
  capability, L4T release, precision, profiles and options; a matching engine is reused, a
  stale or foreign one rebuilt (or refused with every reason when ``--no-rebuild``); engine and
  index files are written atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
import logging
from pathlib import Path
import shutil
from typing import Any

from procvlm_ros.core.backends import trt_engines as te
from procvlm_ros.core.backends.family_inputs import VISION_INPUTS
from procvlm_ros.core.backends.manifest import (
    atomic_write_bytes,
    ExportManifest,
    MANIFEST_NAME,
    sha256_file,
)
from procvlm_ros.core.backends.vision_cache import VisionCache
from procvlm_ros.core.errors import BackendUnavailableError
from procvlm_ros.export.errors import ExportError
from procvlm_ros.export.facts import PROCESSOR_FILES

_LOG = logging.getLogger(__name__)
PRECISIONS = ('fp16', 'int8', 'fp32')
VERIFY_OPT = 17  # verify profile's tuned size: the last token + the default 16 draft tokens
_QDQ = {'QuantizeLinear', 'DequantizeLinear'}


@dataclass(frozen=True)
class TrtBuildOptions:
    """
    :param onnx: ``procvlm-export onnx`` folder.
    :param out: Engine folder (gets engines, ``engines.json`` and copies of the small files).
    :param precision: ``fp16``, ``int8`` (needs a Q/DQ export) or ``fp32``.
    :param workspace_gib: Builder workspace limit.
    :param lm_head_split: Split the vocabulary projection into this many MatMuls (0 = no);
        for small Jetsons whose contiguous-allocation limit breaks the 151936-wide head.
    :param rebuild: ``auto`` (rebuild stale engines), ``never`` (refuse) or ``always``.
    :param verbose: TensorRT verbose logging.
    """

    onnx: Path
    out: Path
    precision: str = 'fp16'
    workspace_gib: float = 4.0
    lm_head_split: int = 0
    rebuild: str = 'auto'
    verbose: bool = False


def check_precision(manifest: ExportManifest, precision: str) -> None:
    """
    Refuse a precision the (strongly typed) ONNX graphs cannot give.

    :raises ExportError: Naming the export dtype and what to do.
    """
    if precision not in PRECISIONS:
        raise ExportError(f'--precision must be one of {PRECISIONS}, got {precision!r}')
    if precision == 'int8':
        import onnx
        ops = set()
        for graph in ('vision', 'decoder'):
            proto = onnx.load(str(manifest.graph_path(graph)), load_external_data=False)
            ops |= {n.op_type for n in proto.graph.node}
        if not ops & _QDQ:
            raise ExportError(
                'int8 needs explicitly quantized graphs (QuantizeLinear/DequantizeLinear '
                'nodes, e.g. from NVIDIA ModelOpt); this export has none, and a STRONGLY_TYPED '
                'network takes its precision from the graph. Build --precision fp16 from an '
                '--dtype fp16 export, or quantize the ONNX first')
        return
    want = {'fp16': 'fp16', 'fp32': 'fp32'}[precision]
    if manifest.dtype != want:
        raise ExportError(
            f'--precision {precision} needs an --dtype {want} export, but {manifest.folder} is '
            f'{manifest.dtype} (a STRONGLY_TYPED network runs the ONNX types as they are); '
            f're-export with procvlm-export onnx --dtype {want}')


def profiles(manifest: ExportManifest) -> dict[str, list[dict[str, list[list[int]]]]]:
    """Optimisation profiles (``name -> [min, opt, max]`` shapes) from the manifest limits."""
    lim, md = manifest.limits, manifest.model
    frames, patches = int(lim['max_frames']), int(lim['max_patches_per_frame'])
    pd, hidden, k = int(md['patch_dim']), int(md['hidden_size']), int(md['num_deepstack'])
    rows = VisionCache(int(lim['cache_frames']), int(lim['max_tokens_per_frame'])).bank_rows
    ctx, chunk = int(lim['max_context']), int(lim['prefill_chunk'])
    merge = int(md['spatial_merge_size'])
    vision = {'pixel_values': [[1, 4, pd], [1, patches, pd], [frames, patches, pd]]}
    for spec in VISION_INPUTS[manifest.family]:
        vision[spec.name] = [list(spec.shape(p, merge)) for p in (4, patches, patches)]
    prompt = min(chunk, frames * (lim['max_tokens_per_frame'] + 2) + 64)

    def decoder(seq: tuple[int, int, int],
                heads: tuple[int, int, int]) -> dict[str, list[list[int]]]:
        shapes = {'input_ids': [[1, s] for s in seq], 'visual_index': [[1, s] for s in seq],
                  'position_ids': [[3, 1, s] for s in seq],
                  'image_embeds': [[rows, hidden]] * 3}
        if k:  # deepstack (Qwen3-VL); Qwen2.5-VL's decoder has no such input
            shapes['deepstack'] = [[k, rows, hidden]] * 3
        if manifest.verifies_drafts:
            shapes['logit_index'] = [[h] for h in heads]
        cache = [[1, int(md['num_kv_heads']), c, int(md['head_dim'])]
                 for c in (1, min(ctx, prompt + 128), ctx)]
        for i in range(int(md['num_layers'])):
            shapes[f'past_key_{i}'] = shapes[f'past_value_{i}'] = cache
        return shapes

    decoders = [decoder((1, prompt, chunk), (1, 1, 1)), decoder((1, 1, 1), (1, 1, 1))]
    verify = int(lim.get('max_verify_tokens', 0)) if manifest.verifies_drafts else 0
    if verify >= 2:  # draft verification: every position's argmax, 2..verify tokens
        opt = min(verify, VERIFY_OPT)
        decoders.append(decoder((2, opt, verify), (2, opt, verify)))
    return {'vision': [vision], 'decoder': decoders}


# ---------------------------------------------------------------- LM-head split


def _vocab_matmul(model: Any, vocab: int, name: str) -> tuple[int, int, Any]:
    """``(node position, weight input slot, weight initializer)`` of the vocabulary MatMul."""
    inits = {i.name: i for i in model.graph.initializer}
    for pos, node in enumerate(model.graph.node):
        hits = [(j, inits[n]) for j, n in enumerate(node.input)
                if n in inits and vocab in list(inits[n].dims)]
        if node.op_type == 'MatMul' and hits:
            return pos, hits[0][0], hits[0][1]
    raise ExportError(f'no vocabulary MatMul (weight dim {vocab}) in {name}')


def split_lm_head(src: Path, dst: Path, parts: int, vocab: int) -> Path:
    """
    Rewrite the decoder so the vocabulary projection is ``parts`` MatMuls plus a Concat.

    Exact (each logit is the same dot product). The split weights are new initializers, so a
    tied embedding table is stored twice in the rewritten graph.

    :raises ExportError: If no MatMul with a ``(vocab, H)`` or ``(H, vocab)`` weight is found.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper
    model = onnx.load(str(src))  # with external data: the weights are sliced
    pos, slot, weight = _vocab_matmul(model, vocab, src.name)
    node = model.graph.node[pos]
    array = numpy_helper.to_array(weight)
    axis = 0 if slot == 0 else 1  # W @ h^T splits rows; h @ W splits columns
    chunks = np.array_split(array, parts, axis=axis)
    new_nodes, outputs = [], []
    for i, chunk in enumerate(chunks):
        name = f'{weight.name}_split{i}'
        model.graph.initializer.append(numpy_helper.from_array(chunk, name))
        inputs = list(node.input)
        inputs[slot] = name
        outputs.append(f'{node.output[0]}_split{i}')
        new_nodes.append(helper.make_node('MatMul', inputs, [outputs[-1]],
                                          name=f'{node.name}_split{i}'))
    concat_axis = 0 if slot == 0 else -1
    new_nodes.append(helper.make_node('Concat', outputs, list(node.output), axis=concat_axis,
                                      name=f'{node.name}_concat'))
    del model.graph.node[pos]
    for offset, new in enumerate(new_nodes):
        model.graph.node.insert(pos + offset, new)
    if not any(weight.name in n.input for n in model.graph.node):
        model.graph.initializer.remove(weight)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
              location=dst.name + '.data')
    return dst


# ---------------------------------------------------------------- build


def _serialize(onnx_path: Path, shapes: list[dict[str, list[list[int]]]],
               workspace_gib: float, verbose: bool) -> bytes:
    """Parse an ONNX file into a STRONGLY_TYPED network and build a serialized engine."""
    import tensorrt as trt
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if builder is None:
        raise ExportError('TensorRT could not create a builder (no usable CUDA device)')
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(f'TensorRT cannot parse {onnx_path.name}:\n- ' + '\n- '.join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    for prof in shapes:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in prof.items():
            profile.set_shape(name, tuple(lo), tuple(opt), tuple(hi))
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f'TensorRT failed to build {onnx_path.name}; rerun with --verbose '
                          '(workspace too small, or an unsupported layer)')
    return bytes(serialized)


def _graph_source(opts: TrtBuildOptions, manifest: ExportManifest,
                  graph: str) -> tuple[Path, dict[str, str]]:
    """The ONNX file to build from (the LM-head-split rewrite for the decoder if asked)."""
    path = manifest.graph_path(graph)
    if graph == 'decoder' and opts.lm_head_split > 1:
        path = split_lm_head(path, Path(opts.out) / 'work' / f'decoder.lmsplit{opts.lm_head_split}'
                             '.onnx', opts.lm_head_split, int(manifest.model['vocab_size']))
        return path, {p.name: sha256_file(p) for p in sorted(path.parent.glob(path.name + '*'))}
    return path, {name: facts['sha256'] for name, facts in manifest.graph(graph)['files'].items()}


def copy_small_files(src: Path, dst: Path) -> None:
    """Manifest and tokenizer/processor files beside the engines (the backend reads them)."""
    if src.resolve() == dst.resolve():
        return
    for name in (MANIFEST_NAME, *PROCESSOR_FILES):
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)


def build_engines(opts: TrtBuildOptions, show_progress: bool = True) -> dict[str, Any]:
    """
    Build (or reuse) the vision and decoder engines; return the engine index.

    :raises ExportError: On a bad export folder, precision, missing TensorRT/GPU, a stale engine
        with ``rebuild='never'``, or a failed build.
    """
    from tqdm import tqdm
    try:
        manifest = ExportManifest.read(opts.onnx)
        manifest.verify_files(hashes=True)
        check_precision(manifest, opts.precision)
        platform = te.detect_platform()
    except BackendUnavailableError as e:
        raise ExportError(str(e)) from e
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        index = te.read_index(out)
    except BackendUnavailableError:
        index = {'engines': {}}
    shapes = profiles(manifest)
    engines = {}
    for graph in tqdm(('vision', 'decoder'), desc='procvlm-export trt', disable=not show_progress):
        engines[graph] = _engine(opts, manifest, graph, shapes[graph], platform,
                                 index['engines'].get(graph))
    copy_small_files(manifest.folder, out)
    te.write_index(out, engines, manifest.export_id)
    return te.read_index(out)


def _engine(opts: TrtBuildOptions, manifest: ExportManifest, graph: str,
            shapes: list[dict[str, list[list[int]]]], platform: te.Platform,
            existing: dict[str, Any] | None) -> dict[str, Any]:
    source, hashes = _graph_source(opts, manifest, graph)
    wanted = te.make_record(graph=graph, onnx_sha256=hashes, export_id=manifest.export_id,
                            precision=opts.precision, profiles=shapes,
                            options={'lm_head_split': opts.lm_head_split if graph == 'decoder'
                                     else 0, 'workspace_gib': opts.workspace_gib},
                            platform=platform)
    if existing is not None and opts.rebuild != 'always':
        path = Path(opts.out) / str(existing.get('file', ''))
        intact = path.is_file() and path.stat().st_size == existing.get('size')
        stale = te.record_mismatches(existing, wanted)
        if intact and not stale:
            _LOG.info('%s engine is current (%s): reused', graph, path.name)
            return existing
        if opts.rebuild == 'never':
            reasons = stale or [f'engine file {path.name} missing or truncated']
            raise ExportError(f'{graph} engine in {opts.out} is stale and --no-rebuild was '
                              'given:\n- ' + '\n- '.join(reasons))
        _LOG.info('%s engine is stale (%s): rebuilding', graph, '; '.join(stale) or 'file')
    _LOG.info('building %s engine (%s) from %s', graph, opts.precision, source.name)
    data = _serialize(source, shapes, opts.workspace_gib, opts.verbose)
    name = f'{graph}.{wanted["key"][:16]}.engine'
    atomic_write_bytes(Path(opts.out) / name, data)
    return dict(wanted, file=name, size=len(data), sha256=sha256_file(Path(opts.out) / name))
