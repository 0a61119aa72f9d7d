"""Backend registry: each kind is imported only when asked for."""

from __future__ import annotations

import importlib

from procvlm_ros.core.backends.base import Backend, GenerationRequest, GenerationResult
from procvlm_ros.core.config import BackendConfig
from procvlm_ros.core.errors import BackendUnavailableError

__all__ = ['Backend', 'GenerationRequest', 'GenerationResult', 'create_backend', 'REGISTRY']

# kind -> (module, class, pip hint)
REGISTRY: dict[str, tuple[str, str, str]] = {
    'transformers': ('procvlm_ros.core.backends.transformers_backend', 'TransformersBackend',
                     "pip install 'torch' 'transformers>=4.57.1'"),
    'scripted': ('procvlm_ros.core.backends.scripted', 'ScriptedBackend', ''),
    'onnxruntime': ('procvlm_ros.core.backends.onnx_backend', 'OnnxRuntimeBackend',
                    "pip install 'procvlm_ros[onnx]' (onnxruntime-gpu for CUDA)"),
    'tensorrt': ('procvlm_ros.core.backends.trt_backend', 'TensorRTBackend',
                 'TensorRT 10 from JetPack or NVIDIA; see docs/export.md'),
}


def create_backend(config: BackendConfig) -> Backend:
    """Instantiate (not load) the backend named by ``config.backend``."""
    try:
        module_name, class_name, hint = REGISTRY[config.backend]
    except KeyError:
        raise BackendUnavailableError(
            f'backend {config.backend!r} is not available in this build; '
            f'available: {sorted(REGISTRY)}') from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise BackendUnavailableError(
            f'backend {config.backend!r} needs a missing package ({e.name}): {hint}') from e
    backend: Backend = getattr(module, class_name)(config)
    return backend
