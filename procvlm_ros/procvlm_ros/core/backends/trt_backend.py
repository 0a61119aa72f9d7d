"""
TensorRT backend: runs the engines of ``procvlm-export trt`` (``engine_dir``).

**Written against the TensorRT 10 Python API but NOT run in this repository**: CI and the
development machine have no GPU and no TensorRT (it is not installable from PyPI). The shared
logic (prompt/token layout, vision cache, greedy loop, buffers) is the code the ONNX Runtime
backend runs and CI verifies; what only this module does — deserialising engines, checking
them against this machine, binding device buffers and ``execute_async_v3`` — has not been
executed. ``docs/export.md`` lists the commands that verify it on a Jetson and a desktop GPU.

Buffers: every input, output and the KV cache are torch CUDA tensors allocated once at load,
sized from the manifest limits the engine profiles were built from; decode steps write the new
token into pinned host memory, copy it asynchronously and reuse the bound addresses, so no
buffer is allocated per token. Everything runs on torch's current CUDA stream.

Model families: the engines' tensors are bound by the names of the export's graphs, which the
buffers take from the manifest's ``model.family`` (:mod:`family_inputs`: Qwen3-VL's
position-table taps and deepstack, Qwen2.5-VL's window layout and no deepstack), the same
inputs the ONNX Runtime backend binds and the TensorRT profiles name. Qwen2.5-VL engines are
as unverified as the rest of this module.

tensorrt and torch are imported inside functions only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from procvlm_ros.core.backends import trt_engines as te
from procvlm_ros.core.backends.device_arrays import TorchCudaArrays
from procvlm_ros.core.backends.exported import ExportedBackend
from procvlm_ros.core.backends.graph_runtime import GraphRuntime
from procvlm_ros.core.backends.manifest import ExportManifest
from procvlm_ros.core.errors import BackendError, BackendUnavailableError

_LOG = logging.getLogger(__name__)


def cuda_device_id(device: str) -> int:
    """``auto``/``cuda`` -> 0, ``cuda:N`` -> N; ``cpu`` is refused."""
    if device == 'cpu':
        raise BackendUnavailableError('the tensorrt backend runs on a CUDA GPU; device is cpu')
    return int(device.split(':', 1)[1]) if ':' in device else 0


def _trt_dtype_names(trt: Any) -> dict[Any, str]:
    return {trt.DataType.FLOAT: 'float32', trt.DataType.HALF: 'float16',
            trt.DataType.INT64: 'int64', trt.DataType.INT32: 'int32', trt.DataType.BOOL: 'bool'}


def decoder_profile(phase: tuple[int, int, int], profiles: int) -> int:
    """
    Decoder profile for a pass (``trt_build.profiles``): 1 = one-token decode, 2 = draft
    verification (every position's logits), 0 = prefill chunks (logits of the last one).
    """
    seq, _, heads = phase
    if seq == 1 and profiles > 1:
        return 1
    if heads > 1 and profiles > 2:
        return 2
    return 0


class TrtRuntime(GraphRuntime):
    """
    Deserialised engines with one execution context per decoder profile.

    :param folder: Engine folder.
    :param index: Its ``engines.json``.
    :param manifest: The export manifest copied beside the engines.
    :param device_id: CUDA device.
    """

    def __init__(self, folder: Path, index: dict[str, Any], manifest: ExportManifest,
                 device_id: int) -> None:
        import tensorrt as trt
        self.arrays = TorchCudaArrays(device_id)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engines = {g: self._load(folder / index['engines'][g]['file'], g)
                        for g in ('vision', 'decoder')}
        names = _trt_dtype_names(trt)
        for graph, engine in self.engines.items():
            io = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            modes = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in io}
            types = {n: names.get(engine.get_tensor_dtype(n), '?') for n in io}
            manifest.verify_io(graph, {n: t for n, t in types.items() if modes[n]},
                               {n: t for n, t in types.items() if not modes[n]})
        stream = self.arrays.stream_handle
        self._vision = self.engines['vision'].create_execution_context()
        decoder = self.engines['decoder']
        self._contexts = [decoder.create_execution_context()
                          for _ in range(decoder.num_optimization_profiles)]
        for i, ctx in enumerate(self._contexts):
            ctx.set_optimization_profile_async(i, stream)
        self._bound: list[tuple[int, int, int] | None] = [None] * len(self._contexts)

    def _load(self, path: Path, graph: str) -> Any:
        engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise BackendUnavailableError(
                f'TensorRT cannot deserialize the {graph} engine {path}: built by another '
                'TensorRT version or for another GPU, or corrupt; rebuild with procvlm-export trt')
        return engine

    def _bind(self, ctx: Any, inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
        a = self.arrays
        for name, array in inputs.items():
            if not ctx.set_input_shape(name, tuple(array.shape)):
                raise BackendError(
                    f'input {name} shape {tuple(array.shape)} is outside the engine profile '
                    '(window longer than the export limits); rebuild with larger limits')
            ctx.set_tensor_address(name, a.ptr(array))
        for name, array in outputs.items():
            ctx.set_tensor_address(name, a.ptr(array))

    def _execute(self, ctx: Any, what: str) -> None:
        if not ctx.execute_async_v3(self.arrays.stream_handle):
            raise BackendError(f'TensorRT execution of the {what} engine failed')

    def run_vision(self, inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
        self._bind(self._vision, inputs, outputs)
        self._execute(self._vision, 'vision')

    def run_decoder(self, inputs: dict[str, Any], outputs: dict[str, Any],
                    phase: tuple[int, int, int]) -> None:
        index = decoder_profile(phase, len(self._contexts))
        if self._bound[index] != phase:
            self._bind(self._contexts[index], inputs, outputs)
            self._bound[index] = phase
        self._execute(self._contexts[index], 'decoder')

    def close(self) -> None:
        self._contexts.clear()
        self.engines.clear()


class TensorRTBackend(ExportedBackend):
    """
    ProcVLM on TensorRT engines built on this machine by ``procvlm-export trt``.

    :param config: Backend parameters: ``engine_dir`` (engines + manifest copy), ``device``
        (auto/cuda/cuda:N), ``max_new_tokens``, ``prompt_layout``, pixel limits.
    """

    name = 'tensorrt'

    def _open_runtime(self, manifest: ExportManifest) -> GraphRuntime:
        device_id = cuda_device_id(self._cfg.device)
        folder = manifest.folder
        platform = te.detect_platform(device_id)  # no TensorRT/GPU is the first thing to say
        index = te.read_index(folder)
        te.check_engines(index, folder, manifest.export_id, platform)
        _LOG.debug('tensorrt %s on %s (sm %s)', platform.tensorrt_version, platform.gpu_name,
                   platform.compute_capability)
        return TrtRuntime(folder, index, manifest, device_id)
