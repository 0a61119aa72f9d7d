"""
ONNX Runtime backend: runs the ``procvlm-export onnx`` graphs on the CPU or CUDA provider.

Every tensor is bound by pointer with IO binding (``run_with_iobinding``) to buffers allocated
once at load (:mod:`exported`): on the CPU provider numpy arrays, on the CUDA provider torch CUDA
tensors (ONNX Runtime's Python API cannot copy into a slice of a device buffer, torch can) with
ONNX Runtime enqueued on torch's stream. Bindings are set once per (tokens, cache slots) shape,
so decode steps only write the new token, its position and its slot into the bound buffers.

The CPU provider is what CI verifies (token-for-token parity with the transformers backend);
the CUDA provider path uses the same bindings but has not been run in this repository's CI.

onnxruntime (and torch, for CUDA) are imported inside functions only.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from procvlm_ros.core.backends.device_arrays import HostArrays, TorchCudaArrays
from procvlm_ros.core.backends.exported import ExportedBackend
from procvlm_ros.core.backends.graph_runtime import Arrays, GraphRuntime
from procvlm_ros.core.backends.manifest import ExportManifest
from procvlm_ros.core.errors import BackendUnavailableError

_LOG = logging.getLogger(__name__)
ORT_TYPES = {'tensor(float)': 'float32', 'tensor(float16)': 'float16',
             'tensor(int64)': 'int64', 'tensor(int32)': 'int32', 'tensor(bool)': 'bool'}
CUDA_EP = 'CUDAExecutionProvider'
THREADS_ENV = 'PROCVLM_ORT_INTRA_OP_THREADS'  # optional CPU thread count (default: ORT's)
MAX_BINDINGS = 16  # decoder IO bindings kept (as many shapes as the backend keeps views for)


def _cuda_index(device: str) -> int:
    return int(device.split(':', 1)[1]) if ':' in device else 0


def _torch_cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def select_providers(device: str, available: list[str]) -> tuple[list[Any], Arrays]:
    """
    Execution providers and buffer kind for the ``device`` parameter.

    :param device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    :param available: ``onnxruntime.get_available_providers()``.
    :raises BackendUnavailableError: If cuda is requested but cannot be used.
    """
    cuda_ok = CUDA_EP in available
    if device.startswith('cuda'):
        if not cuda_ok:
            raise BackendUnavailableError(
                f'device {device!r} requested but onnxruntime offers only {available}; '
                'install onnxruntime-gpu, or use device: cpu')
        if not _torch_cuda_available():
            raise BackendUnavailableError(
                'the onnxruntime CUDA path keeps its preallocated buffers in torch CUDA tensors, '
                'but torch with CUDA is not available; install it, or use device: cpu')
    elif device != 'auto' or not (cuda_ok and _torch_cuda_available()):
        return ['CPUExecutionProvider'], HostArrays()
    arrays = TorchCudaArrays(_cuda_index(device))
    options = {'device_id': str(arrays.device_id),
               'user_compute_stream': str(arrays.stream_handle)}
    return [(CUDA_EP, options), 'CPUExecutionProvider'], arrays


class OrtRuntime(GraphRuntime):
    """
    Two ONNX Runtime sessions with IO binding on the backend's buffers.

    :param manifest: The verified export manifest.
    :param device: Backend ``device`` parameter.
    """

    def __init__(self, manifest: ExportManifest, device: str) -> None:
        import onnxruntime as ort
        self._ort = ort
        self.providers, self.arrays = select_providers(device, ort.get_available_providers())
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # Two sessions alternate; spinning worker threads of one would starve the other.
        options.add_session_config_entry('session.intra_op.allow_spinning', '0')
        threads = os.environ.get(THREADS_ENV, '').strip()
        if threads:
            options.intra_op_num_threads = int(threads)
        self.sessions = {name: self._open(manifest, name, options) for name in ('vision',
                                                                                'decoder')}
        # One IO binding per decoder shape (prefill chunk, decode, each verify length): a pass
        # of a shape seen before binds nothing (issue 11: per-pass host cost).
        self._decoder_io: dict[tuple[int, int, int], Any] = {}

    def _open(self, manifest: ExportManifest, name: str, options: Any) -> Any:
        path = manifest.graph_path(name)
        try:
            session = self._ort.InferenceSession(str(path), options, providers=self.providers)
        except Exception as e:  # ORT raises Fail/InvalidProtobuf/... with long texts
            detail = str(e).strip().splitlines()[0][:300] if str(e).strip() else ''
            raise BackendUnavailableError(
                f'onnxruntime cannot load the {name} graph {path} ({type(e).__name__}: '
                f'{detail}); the file is corrupt, truncated or not from procvlm-export: '
                're-export the folder with procvlm-export onnx') from e
        manifest.verify_graph_metadata(name, session.get_modelmeta().custom_metadata_map)
        manifest.verify_io(name, {i.name: ORT_TYPES.get(i.type, i.type)
                                  for i in session.get_inputs()},
                           {o.name: ORT_TYPES.get(o.type, o.type)
                            for o in session.get_outputs()})
        return session

    def _bind(self, io: Any, inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
        a = self.arrays
        for name, array in inputs.items():
            io.bind_input(name, a.device_type, a.device_id, a.element_type(array),
                          list(array.shape), a.ptr(array))
        for name, array in outputs.items():
            io.bind_output(name, a.device_type, a.device_id, a.element_type(array),
                           list(array.shape), a.ptr(array))

    def run_vision(self, inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
        io = self.sessions['vision'].io_binding()
        self._bind(io, inputs, outputs)
        self.sessions['vision'].run_with_iobinding(io)

    def run_decoder(self, inputs: dict[str, Any], outputs: dict[str, Any],
                    phase: tuple[int, int, int]) -> None:
        io = self._decoder_io.get(phase)  # same shapes -> same pointers: keep the bindings
        if io is None:
            if len(self._decoder_io) >= MAX_BINDINGS:
                self._decoder_io.pop(next(iter(self._decoder_io)))
            io = self._decoder_io[phase] = self.sessions['decoder'].io_binding()
            self._bind(io, inputs, outputs)
        self.sessions['decoder'].run_with_iobinding(io)

    def close(self) -> None:
        self.sessions.clear()
        self._decoder_io.clear()


class OnnxRuntimeBackend(ExportedBackend):
    """
    ProcVLM on ONNX Runtime from a ``procvlm-export onnx`` folder (``engine_dir``).

    :param config: Backend parameters: ``engine_dir``, ``device`` (auto/cpu/cuda[:N]),
        ``max_new_tokens``, ``prompt_layout``, pixel limits.
    """

    name = 'onnxruntime'

    def _open_runtime(self, manifest: ExportManifest) -> GraphRuntime:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as e:
            raise BackendUnavailableError(
                "the onnxruntime backend needs onnxruntime: pip install 'procvlm_ros[onnx]' "
                '(onnxruntime-gpu for CUDA)') from e
        manifest.verify_files()
        runtime = OrtRuntime(manifest, self._cfg.device)
        _LOG.debug('onnxruntime providers %s', runtime.providers)
        return runtime
