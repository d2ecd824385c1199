"""Where several adapters live in one flat per-document buffer, so one optimizer launch updates them all."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LoraLayout:
    """Flat layout of adapters ``(rank, in, out)``: row ``b`` of a ``(D, numel)`` buffer holds document
    ``b``'s A blocks (adapter 0's ``r*in`` values, adapter 1's, ...) in columns ``[0, a_numel)``, then its
    B blocks (``out*r`` values each) in ``[a_numel, numel)``. The reset's ``keep`` is ``a_numel``."""

    shapes: tuple[tuple[int, int, int], ...]

    def __post_init__(self):
        shapes = tuple(tuple(int(v) for v in s) for s in self.shapes)
        if not shapes or any(len(s) != 3 or min(s) < 1 or s[0] > s[1] for s in shapes):
            raise ValueError(f"shapes must be a non-empty list of (rank, in, out) with 1 <= rank <= in, got {self.shapes!r}")
        object.__setattr__(self, "shapes", shapes)

    @property
    def a_numel(self) -> int:
        """Columns holding the A blocks."""
        return sum(r * n_in for r, n_in, _ in self.shapes)

    @property
    def numel(self) -> int:
        """Parameters per document."""
        return self.a_numel + sum(n_out * r for r, _, n_out in self.shapes)

    def views(self, flat: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``[(A_i (D, r, in), B_i (D, out, r))]``: views of ``flat (D, numel)`` (gradients flow into ``flat``)."""
        if flat.dim() != 2 or flat.shape[1] != self.numel or flat.stride(1) != 1:
            raise ValueError(f"flat must be (D, {self.numel}) with contiguous rows, got {tuple(flat.shape)}")
        D, out, a_off, b_off = flat.shape[0], [], 0, self.a_numel
        for r, n_in, n_out in self.shapes:
            A = flat[:, a_off:a_off + r * n_in].view(D, r, n_in)
            B = flat[:, b_off:b_off + n_out * r].view(D, n_out, r)
            out.append((A, B))
            a_off, b_off = a_off + r * n_in, b_off + n_out * r
        return out

    def init(self, D: int, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """A new ``(D, numel)`` buffer: every ``A ~ U(-1/sqrt(in), 1/sqrt(in))``, every ``B = 0`` (delta 0)."""
        flat = torch.zeros((D, self.numel), dtype=dtype, device=device)
        for (A, _), (_, n_in, _) in zip(self.views(flat), self.shapes):
            bound = n_in ** -0.5
            A.copy_(torch.rand(A.shape, generator=generator, dtype=torch.float32).mul_(2 * bound).sub_(bound))
        return flat
