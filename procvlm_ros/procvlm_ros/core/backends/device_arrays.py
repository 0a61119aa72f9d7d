"""
Preallocated flat buffers on the host (numpy) or a CUDA device (torch), addressed by pointer.

The exported backends allocate every buffer once at load, with the capacity the manifest's
limits allow, and use views of their leading elements for each call (a flat buffer viewed as
``[1, kv, C, hd]`` for a context capacity ``C`` is contiguous, so it can be bound to a runtime by
pointer). Small per-token inputs are :class:`Staged` pairs: a host array the loop writes into
and the device array the runtime reads (the same array on the host backend).

torch is imported only by :class:`TorchCudaArrays`.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Any

import numpy as np
import numpy.typing as npt

NP_DTYPES = {'float32': np.float32, 'float16': np.float16, 'int64': np.int64, 'int32': np.int32}


@dataclass
class Staged:
    """A host array and the device array it is copied to (identical on the host backend)."""

    host: npt.NDArray[Any]
    dev: Any
    pinned: Any = None  # torch pinned tensor behind ``host`` (CUDA only)


class HostArrays:
    """numpy buffers in host memory (ONNX Runtime CPU)."""

    device_type = 'cpu'
    device_id = 0

    def zeros(self, count: int, dtype: str) -> Any:
        return np.zeros(int(count), dtype=NP_DTYPES[dtype])

    def staged(self, count: int, dtype: str) -> Staged:
        buf = self.zeros(count, dtype)
        return Staged(buf, buf)

    @staticmethod
    def view(flat: Any, shape: tuple[int, ...]) -> Any:
        """The first ``prod(shape)`` elements of ``flat`` as a contiguous ``shape`` view."""
        return flat[:math.prod(shape)].reshape(shape)

    @staticmethod
    def ptr(array: Any) -> int:
        return int(array.ctypes.data)

    @staticmethod
    def element_type(array: Any) -> Any:
        """numpy dtype of the elements (what ONNX Runtime's binding API takes)."""
        return array.dtype.type

    @staticmethod
    def push(staged: Staged, count: int) -> None:
        """Host to device for the first ``count`` elements (nothing to do on the host)."""

    @staticmethod
    def copy(dst: Any, src: Any) -> None:
        dst[...] = src

    @staticmethod
    def upload(dst: Any, src: npt.NDArray[Any]) -> None:
        dst[...] = src

    @staticmethod
    def to_host(array: Any) -> npt.NDArray[Any]:
        return np.array(array, copy=True)

    @staticmethod
    def item(array: Any) -> int:
        return int(array.reshape(-1)[0])

    def synchronize(self) -> None:
        """Nothing is asynchronous on the host."""


class TorchCudaArrays:
    """
    torch CUDA tensors (ONNX Runtime CUDA provider, TensorRT); pinned host staging.

    :param device_id: CUDA device ordinal.
    """

    device_type = 'cuda'

    def __init__(self, device_id: int) -> None:
        import torch
        self._torch = torch
        self.device_id = int(device_id)
        self.device = torch.device('cuda', self.device_id)
        self._dtypes = {'float32': torch.float32, 'float16': torch.float16,
                        'int64': torch.int64, 'int32': torch.int32}

    @property
    def stream_handle(self) -> int:
        """Raw handle of torch's current stream on the device (runtimes enqueue on it)."""
        return int(self._torch.cuda.current_stream(self.device).cuda_stream)

    def zeros(self, count: int, dtype: str) -> Any:
        return self._torch.zeros(int(count), dtype=self._dtypes[dtype], device=self.device)

    def staged(self, count: int, dtype: str) -> Staged:
        pinned = self._torch.zeros(int(count), dtype=self._dtypes[dtype], pin_memory=True)
        return Staged(pinned.numpy(), self.zeros(count, dtype), pinned)

    @staticmethod
    def view(flat: Any, shape: tuple[int, ...]) -> Any:
        return flat[:math.prod(shape)].view(shape)

    @staticmethod
    def ptr(array: Any) -> int:
        return int(array.data_ptr())

    def element_type(self, array: Any) -> Any:
        names = {v: k for k, v in self._dtypes.items()}
        return NP_DTYPES[names[array.dtype]]

    @staticmethod
    def push(staged: Staged, count: int) -> None:
        staged.dev[:count].copy_(staged.pinned[:count], non_blocking=True)

    @staticmethod
    def copy(dst: Any, src: Any) -> None:
        dst.copy_(src)

    def upload(self, dst: Any, src: npt.NDArray[Any]) -> None:
        dst.copy_(self._torch.from_numpy(np.ascontiguousarray(src)))

    @staticmethod
    def to_host(array: Any) -> npt.NDArray[Any]:
        return np.asarray(array.detach().cpu().numpy())

    @staticmethod
    def item(array: Any) -> int:
        return int(array.reshape(-1)[0].item())

    def synchronize(self) -> None:
        self._torch.cuda.synchronize(self.device)

