"""The quantised-tensor record shared by the quantiser, the artifact writer and the codec."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from triton_kernels.fake_quant import qmax_for

LQER_SUFFIXES = (".lqer_a", ".lqer_b")  # the entries holding a matrix's LQER factors (pgolf.quant.lqer)


@dataclass(frozen=True)
class QTensor:
    """A symmetric per-row quantised matrix: ``value[r, c] ~= codes[r, c] * scale[r]``.

    ``codes`` is int8 with values in ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]`` (symmetric: the
    most negative code is never used), except LQER factors (:data:`LQER_SUFFIXES`), which use the
    whole two's-complement range ``[-2**(bits-1), 2**(bits-1) - 1]`` as the record does; ``scale`` is float16 of shape ``(rows,)``; ``shape`` is the
    original tensor shape (rows = shape[0], the rest flattened into columns); ``dtype`` the
    original float dtype to restore.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    bits: int
    shape: tuple[int, ...]
    dtype: torch.dtype

    def __post_init__(self):
        if self.codes.dtype != torch.int8 or self.codes.ndim != 2:
            raise ValueError(f"QTensor codes must be a 2-D int8 tensor, got {self.codes.dtype} {tuple(self.codes.shape)}")
        if self.scale.dtype != torch.float16 or self.scale.shape != (self.codes.shape[0],):
            raise ValueError(f"QTensor scale must be float16 of shape ({self.codes.shape[0]},), got "
                             f"{self.scale.dtype} {tuple(self.scale.shape)}")
        if not 2 <= self.bits <= 8:
            raise ValueError(f"QTensor bits must be in 2..8, got {self.bits}")

    @property
    def qmax(self) -> int:
        """Largest code magnitude, ``2**(bits-1) - 1``."""
        return qmax_for(self.bits)

    def dequantize(self) -> torch.Tensor:
        """``codes * scale`` in float32 (scale widened from fp16), reshaped and cast back."""
        w = self.codes.float() * self.scale.float()[:, None]
        return w.reshape(self.shape).to(self.dtype)
