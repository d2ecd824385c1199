"""SentencePiece helpers: load (with the checks val_bpb needs), the byte table, training.

The byte table implements the challenge's byte rule. For a predicted token ``y`` whose
previous token is ``x``::

    bytes(y) = base_bytes[y] + (has_leading_space[y] and not is_boundary[x])

* control, unknown and unused pieces (``<pad>``, ``<s>``, ``</s>``, ``<unk>``) are boundary
  tokens worth 0 bytes;
* byte-fallback pieces (``<0xE4>``) are worth exactly 1 byte;
* any other piece is worth the UTF-8 length of its text after removing one leading ``▁``
  (U+2581), and that ``▁`` sets ``has_leading_space``: the space is counted only when the
  previous token is not a boundary (a document's first token after BOS has no space).

Ids past the tokenizer's vocabulary (a model vocab padded beyond it) are boundary tokens.

The official tokenizers (``fineweb_1024_bpe`` / ``fineweb_8192_bpe``) are BPE with ids
``<pad>=0, <s>=1, </s>=2, <unk>=3``, ``nmt_nfkc`` normalisation (which also collapses runs of
whitespace and turns newlines and tabs into single spaces), no dummy prefix, split digits,
and a standalone ``▁`` piece; the 8192 one has byte fallback, the 1024 one does not (rare
characters become ``<unk>``). :func:`train_tokenizer` trains with the same settings plus
byte fallback.
"""
from __future__ import annotations

import io
import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import sentencepiece as spm
import torch

from pgolf.util.atomic import atomic_write_bytes

SPACE = "\u2581"  # SentencePiece's visible space, "▁"


class TokenizerError(ValueError):
    """A tokenizer file is missing, unreadable, or unfit for exact val_bpb."""


def load_tokenizer(path: str | os.PathLike, *, vocab_size: int | None = None) -> spm.SentencePieceProcessor:
    """Load a SentencePiece model, refusing ones that val_bpb cannot score exactly.

    Raises :class:`TokenizerError` if the file is missing or unreadable, if it has no
    standalone ``▁`` piece (spaces would then hide inside other pieces and be lost or
    double counted), or if ``vocab_size`` is given and differs from the model's.
    """
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(f"tokenizer {path} does not exist")
    sp = spm.SentencePieceProcessor()
    try:
        sp.load(str(path))
    except (OSError, RuntimeError) as e:
        raise TokenizerError(f"tokenizer {path} is not a SentencePiece model: {e}") from None
    space_id = sp.piece_to_id(SPACE)
    if sp.id_to_piece(space_id) != SPACE or sp.is_unknown(space_id):
        raise TokenizerError(f"tokenizer {path} has no standalone '{SPACE}' piece; val_bpb byte "
                             "counting needs one (retrain it, e.g. with pgolf data --train-tokenizer)")
    if vocab_size is not None and sp.vocab_size() != vocab_size:
        raise TokenizerError(f"tokenizer {path} has {sp.vocab_size()} pieces but vocab_size {vocab_size} "
                             "was asked for")
    return sp


@dataclass
class ByteTable:
    """Per-token-id lookup tables for the byte rule (see the module docstring)."""

    base_bytes: torch.Tensor  # int16 [V]
    has_leading_space: torch.Tensor  # bool [V]
    is_boundary: torch.Tensor  # bool [V]

    def to(self, device: str | torch.device) -> "ByteTable":
        """The same table on ``device``."""
        return ByteTable(self.base_bytes.to(device), self.has_leading_space.to(device),
                         self.is_boundary.to(device))


def byte_table(sp: spm.SentencePieceProcessor, vocab_size: int) -> ByteTable:
    """Build the :class:`ByteTable` of ``sp`` with ``max(sp.vocab_size(), vocab_size)`` rows."""
    n = sp.vocab_size()
    size = max(n, vocab_size)
    base = torch.zeros(size, dtype=torch.int16)
    lead = torch.zeros(size, dtype=torch.bool)
    boundary = torch.ones(size, dtype=torch.bool)
    for i in range(n):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        boundary[i] = False
        if sp.is_byte(i):
            base[i] = 1
            continue
        piece = sp.id_to_piece(i)
        if piece.startswith(SPACE):
            lead[i] = True
            piece = piece[1:]
        base[i] = len(piece.encode("utf-8"))
    return ByteTable(base, lead, boundary)


def _training_lines(texts: Iterable[str]) -> Iterator[str]:
    """Non-empty lines of the texts: newlines are spaces after normalisation anyway, and
    SentencePiece skips training sentences longer than ``max_sentence_length``."""
    for text in texts:
        for line in text.split("\n"):
            if line.strip():
                yield line


def train_tokenizer(texts: Iterable[str] | str | os.PathLike, vocab_size: int,
                    model_prefix: str | os.PathLike) -> Path:
    """Train a SentencePiece BPE model deterministically; returns ``<model_prefix>.model``.

    ``texts`` is an iterable of documents or the path of a UTF-8 text file. Settings follow
    the official tokenizers (ids ``<pad>=0 <s>=1 </s>=2 <unk>=3``, ``nmt_nfkc``, no dummy
    prefix, split digits) with byte fallback on, a single thread and no input sampling, so
    the same text gives a byte-identical model. ``▁`` is a required character, and the
    result is checked by :func:`load_tokenizer`.
    """
    if isinstance(texts, (str, os.PathLike)):
        path = Path(texts)
        if not path.is_file():
            raise TokenizerError(f"tokenizer training text {path} does not exist")
        texts = [path.read_text(encoding="utf-8")]
    out = Path(f"{os.fspath(model_prefix)}.model")
    lines = _training_lines(texts)
    first = next(lines, None)
    if first is None:
        raise TokenizerError(f"no text to train a {vocab_size}-piece tokenizer on: the training documents are empty")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=itertools.chain([first], lines), model_writer=model, vocab_size=vocab_size,
            model_type="bpe", byte_fallback=True, split_digits=True, add_dummy_prefix=False,
            normalization_rule_name="nmt_nfkc", remove_extra_whitespaces=True,
            character_coverage=0.9995, required_chars=SPACE, pad_id=0, bos_id=1, eos_id=2, unk_id=3,
            num_threads=1, input_sentence_size=0, shuffle_input_sentence=False,
            max_sentence_length=1 << 16, minloglevel=2)
    except RuntimeError as e:
        raise TokenizerError(f"training a {vocab_size}-piece tokenizer failed: {e}") from None
    atomic_write_bytes(out, model.getvalue())
    load_tokenizer(out, vocab_size=vocab_size)
    return out
