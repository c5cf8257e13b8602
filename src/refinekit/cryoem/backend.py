"""Array backends: numpy on the CPU, torch on a GPU (or on the CPU, which is how it is tested).

The heavy kernels (Fourier-slice gathers, back-projection scatters, the score matrix products, FFTs)
are written once against this small interface; everything else is numpy. torch is imported only when
a torch backend is asked for, so refinekit.cryoem works without it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core import InputError

Array = Any  # a numpy.ndarray or a torch.Tensor


class NumpyBackend:
    """numpy (float32 / complex64 arithmetic, BLAS matrix products)."""

    name = "numpy"
    device = "cpu"

    def asarray(self, x: Any, dtype: str = "float32") -> np.ndarray:
        return np.ascontiguousarray(np.asarray(x), dtype=_NUMPY_DTYPES[dtype])

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def zeros(self, shape: tuple[int, ...], dtype: str = "float32") -> np.ndarray:
        return np.zeros(shape, dtype=_NUMPY_DTYPES[dtype])

    def floor_int(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(floor(x) as int64, x - floor(x))``."""
        f = np.floor(x)
        return f.astype(np.int64), (x - f).astype(np.float32, copy=False)

    def scatter_add(self, index: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
        """``out[index[i]] += values[i]`` into a zero float64 array of ``size`` (accumulated in double)."""
        return np.bincount(index.ravel(), weights=values.ravel(), minlength=size)

    def argmax_max(self, x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
        index = np.argmax(x, axis=axis)
        return index, np.take_along_axis(x, np.expand_dims(index, axis), axis).squeeze(axis)

    def max(self, x: np.ndarray, axis: int) -> np.ndarray:
        return x.max(axis=axis)

    def take_last(self, x: np.ndarray, index: np.ndarray) -> np.ndarray:
        """``x[..., index]`` per leading row: ``x`` (b, t, j), ``index`` (b, m) -> (b, t, m)."""
        return np.take_along_axis(x, index[:, None, :], axis=2)

    def topk(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices and values of the ``k`` largest entries of each row, best first."""
        if k >= x.shape[1]:
            index = np.argsort(-x, axis=1)
        else:
            part = np.argpartition(-x, k - 1, axis=1)[:, :k]
            order = np.argsort(-np.take_along_axis(x, part, axis=1), axis=1)
            index = np.take_along_axis(part, order, axis=1)
        return index, np.take_along_axis(x, index, axis=1)

    def fft2(self, x: np.ndarray) -> np.ndarray:
        return np.fft.fft2(x).astype(np.complex64, copy=False)

    def fftn(self, x: np.ndarray) -> np.ndarray:
        return np.fft.fftn(x).astype(np.complex64, copy=False)

    def ifftn_real(self, x: np.ndarray) -> np.ndarray:
        return np.fft.ifftn(x).real

    def cos(self, x: np.ndarray) -> np.ndarray:
        return np.cos(x)

    def sin(self, x: np.ndarray) -> np.ndarray:
        return np.sin(x)

    def sqrt(self, x: np.ndarray) -> np.ndarray:
        return np.sqrt(x)

    def einsum(self, spec: str, *operands: np.ndarray) -> np.ndarray:
        return np.einsum(spec, *operands, optimize=True)

    def concatenate(self, arrays: list[np.ndarray], axis: int = 0) -> np.ndarray:
        return np.concatenate(arrays, axis=axis)

    def stack(self, arrays: list[np.ndarray], axis: int = 0) -> np.ndarray:
        return np.stack(arrays, axis=axis)

    def maximum(self, x: np.ndarray, value: float) -> np.ndarray:
        return np.maximum(x, value)

    def complex(self, real: np.ndarray, imag: np.ndarray) -> np.ndarray:
        out = np.empty(real.shape, dtype=np.complex64)
        out.real, out.imag = real, imag
        return out


class TorchBackend:
    """torch on ``device`` ("cpu" or "cuda[:n]"); same arithmetic as :class:`NumpyBackend`."""

    name = "torch"

    def __init__(self, device: str = "cpu") -> None:
        try:
            import torch
        except ImportError:
            raise InputError("the torch backend needs torch (pip install 'refinekit[gpu]')") from None
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA device is available to torch")
        if device.startswith("cuda"):
            # a bad name or index would otherwise fail with a traceback at the first tensor
            try:
                index = torch.device(device).index
            except RuntimeError:
                raise InputError(f"--device {device}: not a CUDA device (cuda or cuda:N)") from None
            count = torch.cuda.device_count()
            if index is not None and index >= count:
                raise InputError(
                    f"--device {device}: torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
                )
        self.torch = torch
        self.device = device
        self._dtypes = {
            "float32": torch.float32,
            "float64": torch.float64,
            "complex64": torch.complex64,
            "int64": torch.int64,
            "bool": torch.bool,
        }

    def asarray(self, x: Any, dtype: str = "float32") -> Any:
        torch = self.torch
        if isinstance(x, torch.Tensor):
            return x.to(device=self.device, dtype=self._dtypes[dtype])
        return torch.as_tensor(
            np.ascontiguousarray(np.asarray(x), dtype=_NUMPY_DTYPES[dtype]), device=self.device
        )

    def to_numpy(self, x: Any) -> np.ndarray:
        if isinstance(x, self.torch.Tensor):
            return x.detach().cpu().numpy()
        return np.asarray(x)

    def zeros(self, shape: tuple[int, ...], dtype: str = "float32") -> Any:
        return self.torch.zeros(shape, dtype=self._dtypes[dtype], device=self.device)

    def floor_int(self, x: Any) -> tuple[Any, Any]:
        f = self.torch.floor(x)
        return f.long(), x - f

    def scatter_add(self, index: Any, values: Any, size: int) -> Any:
        out = self.torch.zeros(size, dtype=self.torch.float64, device=self.device)
        out.index_add_(0, index.reshape(-1), values.reshape(-1).to(self.torch.float64))
        return out

    def argmax_max(self, x: Any, axis: int) -> tuple[Any, Any]:
        values, index = self.torch.max(x, dim=axis)
        return index, values

    def max(self, x: Any, axis: int) -> Any:
        return self.torch.amax(x, dim=axis)

    def take_last(self, x: Any, index: Any) -> Any:
        return self.torch.gather(x, 2, index[:, None, :].expand(x.shape[0], x.shape[1], index.shape[1]))

    def topk(self, x: Any, k: int) -> tuple[Any, Any]:
        values, index = self.torch.topk(x, min(k, x.shape[1]), dim=1, largest=True, sorted=True)
        return index, values

    def fft2(self, x: Any) -> Any:
        return self.torch.fft.fft2(x)

    def fftn(self, x: Any) -> Any:
        return self.torch.fft.fftn(x)

    def ifftn_real(self, x: Any) -> Any:
        return self.torch.fft.ifftn(x).real

    def cos(self, x: Any) -> Any:
        return self.torch.cos(x)

    def sin(self, x: Any) -> Any:
        return self.torch.sin(x)

    def sqrt(self, x: Any) -> Any:
        return self.torch.sqrt(x)

    def einsum(self, spec: str, *operands: Any) -> Any:
        return self.torch.einsum(spec, *operands)

    def concatenate(self, arrays: list[Any], axis: int = 0) -> Any:
        return self.torch.cat(arrays, dim=axis)

    def stack(self, arrays: list[Any], axis: int = 0) -> Any:
        return self.torch.stack(arrays, dim=axis)

    def maximum(self, x: Any, value: float) -> Any:
        return self.torch.clamp(x, min=value)

    def complex(self, real: Any, imag: Any) -> Any:
        return self.torch.complex(real.float(), imag.float())


_NUMPY_DTYPES = {
    "float32": np.float32,
    "float64": np.float64,
    "complex64": np.complex64,
    "int64": np.int64,
    "bool": np.bool_,
}

Backend = NumpyBackend | TorchBackend


def get_backend(backend: str | None = None, device: str = "cpu") -> Backend:
    """The backend for ``device``: numpy for "cpu" unless ``backend="torch"``; torch for "cuda".

    >>> get_backend().name, get_backend(device="cpu").device
    ('numpy', 'cpu')
    """
    if device != "cpu" and not device.startswith("cuda"):
        raise InputError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if backend is None:
        backend = "numpy" if device == "cpu" else "torch"
    if backend == "numpy":
        if device != "cpu":
            raise InputError("the numpy backend runs on the CPU only; use the torch backend for cuda")
        return NumpyBackend()
    if backend == "torch":
        return TorchBackend(device)
    raise InputError(f"backend must be 'numpy' or 'torch', got {backend!r}")
