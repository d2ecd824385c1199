"""Document-aware attention: which positions of a packed row may attend to which.

A row of the training or validation stream holds several documents, each starting with BOS
(``[BOS] + tokens``, no EOS). With ``doc_attention`` the row is cut into *segments*: a new
segment starts at the row start, at every BOS and, with ``max_segment > 0``, every
``max_segment`` tokens after the start of the current document (RECORD_STACK.md B.13: the record
cuts at every BOS and every 2048 tokens). Position ``q`` attends to ``k`` iff ``k <= q`` and both
lie in the same segment, so no logit of a document depends on any token of an earlier one through
attention.

*Pieces* (packed evaluation rows, :mod:`pgolf.eval.schedule`): a row may also hold several
independent contexts side by side, each starting where ``starts`` is true (a piece need not start
with a BOS: a window into a long document does not). A piece start cuts like a document start
(``max_segment`` counts from it) and, in addition, restarts the RoPE positions (``positions``:
the index within the piece), so each piece is computed as if it were a row of its own.

Two forms of the same segmentation: a boolean mask ``[B, 1, T, T]`` for scaled-dot-product
attention (any device), and ``cu_seqlens`` over the flattened ``B * T`` tokens for flash-attn's
varlen kernel (CUDA, when installed), padded to a multiple of :data:`CU_SEQLENS_BUCKET` entries
with empty segments so that its shape changes rarely (as the record does for compile stability).
RoPE positions stay the indices within the row: attention scores depend only on ``q - k``, so
they equal per-document positions.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

CU_SEQLENS_BUCKET = 64


def segment_ids(input_ids: torch.Tensor, *, bos_id: int | None, max_segment: int = 0,
                starts: torch.Tensor | None = None) -> torch.Tensor:
    """Segment index of every position of ``input_ids [B, T]`` (int64 ``[B, T]``, increasing along
    each row; equal ids = same segment). See the module docstring for where segments start;
    ``bos_id=None`` cuts at no BOS, ``starts`` (bool ``[B, T]``) adds the piece starts."""
    is_start = input_ids == bos_id if bos_id is not None else torch.zeros_like(input_ids, dtype=torch.bool)
    if starts is not None:
        is_start = is_start | starts
    doc = is_start.long().cumsum(1)  # [B, T]; the row's leading partial document is 0
    if not max_segment:
        return doc
    T = input_ids.size(1)
    chunk = piece_positions(is_start) // max_segment
    return doc * (T // max_segment + 1) + chunk


def piece_positions(starts: torch.Tensor) -> torch.Tensor:
    """Index of every position within its piece: ``t - (the last s <= t with starts[s], else 0)``
    (int64 ``[B, T]`` from bool ``starts [B, T]``)."""
    idx = torch.arange(starts.size(1), device=starts.device).expand_as(starts)
    return idx - torch.where(starts, idx, torch.zeros_like(idx)).cummax(1).values


def segment_mask(segments: torch.Tensor) -> torch.Tensor:
    """``mask[b, 0, q, k] = k <= q and segments[b, q] == segments[b, k]`` (bool ``[B, 1, T, T]``)."""
    T = segments.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
    return ((segments[:, :, None] == segments[:, None, :]) & causal)[:, None]


def varlen_boundaries(segments: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(cu_seqlens, max_seqlen)`` of the segments over the flattened ``B * T`` tokens: int32
    segment starts followed by ``B * T``, padded with ``B * T`` to a multiple of
    :data:`CU_SEQLENS_BUCKET` entries; ``max_seqlen`` the longest segment (a host integer)."""
    B, T = segments.shape
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    pos = starts.flatten().nonzero().squeeze(1)
    total = torch.tensor([B * T], device=segments.device, dtype=pos.dtype)
    bounds = torch.cat((pos, total))
    max_seqlen = int((bounds[1:] - bounds[:-1]).max())
    padded = -(-bounds.numel() // CU_SEQLENS_BUCKET) * CU_SEQLENS_BUCKET
    cu = torch.full((padded,), B * T, dtype=torch.int32, device=segments.device)
    cu[: bounds.numel()] = bounds.to(torch.int32)
    return cu, max_seqlen


@dataclass(frozen=True)
class DocumentSpans:
    """The segmentation of one batch as attention consumes it: ``mask`` for SDPA, or
    ``cu_seqlens``/``max_seqlen`` for flash-attn varlen (exactly one of the two is set), and for
    packed rows the RoPE ``positions`` (int64 ``[B, T]``; None: the index within the row)."""

    mask: torch.Tensor | None = None
    cu_seqlens: torch.Tensor | None = None
    max_seqlen: int = 0
    positions: torch.Tensor | None = None


def document_spans(input_ids: torch.Tensor, *, bos_id: int | None, max_segment: int, varlen: bool,
                   starts: torch.Tensor | None = None) -> DocumentSpans:
    """The :class:`DocumentSpans` of ``input_ids`` (``varlen``: the flash-attn form; ``starts``:
    piece starts of packed rows, see the module docstring)."""
    seg = segment_ids(input_ids, bos_id=bos_id, max_segment=max_segment, starts=starts)
    positions = None if starts is None else piece_positions(starts)
    if varlen:
        cu, max_seqlen = varlen_boundaries(seg)
        return DocumentSpans(cu_seqlens=cu, max_seqlen=max_seqlen, positions=positions)
    return DocumentSpans(mask=segment_mask(seg), positions=positions)
