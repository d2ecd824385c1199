"""Exact val_bpb: counted bytes equal the UTF-8 bytes of the text, and every target is scored once.

Each known bug is written out inline as a mutant and shown to give a different total than the
UTF-8 length (or the brute-force sum), while the real implementation matches it.
"""
import io
import math
import os
import socket

import numpy as np
import pytest
import sentencepiece as spm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pgolf.data.corpus import iter_documents
from pgolf.eval.flat import unigram_bpb
from pgolf.eval.scoring import BpbAccumulator, Score, score_stream, token_bytes, window_range
from pgolf.data.tokenizer import ByteTable, byte_table, load_tokenizer, train_tokenizer

DOCS = [
    "Hello world. This is plain ASCII.",
    "   leading spaces, trailing spaces   ",
    "multiple   spaces\tand\ttabs\nand\n\nnewlines\r\nhere",
    "Café crème, naïve résumé: é è ê ü ß.",
    "中文字符 and 日本語のテキスト",
    "emoji 😀🎉 mixed with text 👍🏽 end",
    "rare CJK 𠀀𪚥 and symbols ⟁ ⨷ ☃ ᚠᚢᚦ",
    "digits 1234567890 and 3.14159",
    "a",
]


@pytest.fixture(scope="module")
def trained_sp(tmp_path_factory):
    docs = [d for _, d in zip(range(120), iter_documents())]
    return load_tokenizer(train_tokenizer(docs, 384, tmp_path_factory.mktemp("tok") / "tok"))


def _stream(sp, docs):
    """Concatenate ``[BOS] + ids`` per document; return the stream and each document's target slice."""
    stream, spans = [], []
    for doc in docs:
        stream.append(sp.bos_id())
        ids = sp.encode(doc)
        spans.append((len(stream), len(stream) + len(ids)))
        stream.extend(ids)
    return torch.tensor(stream), spans


def _count(stream, table):
    """Bytes of every target of the stream, indexed by stream position (position 0 has none)."""
    return torch.cat([torch.zeros(1, dtype=torch.int64), token_bytes(stream[:-1], stream[1:], table)])


def _text_bytes(doc):
    """UTF-8 bytes of the text as the tokenizers see it: whitespace runs (incl. newlines) -> one space."""
    return len(" ".join(doc.split()).encode("utf-8"))


def _check_matches_text(sp, docs):
    """Counted bytes == UTF-8 bytes per document and in total; returns the stream and table."""
    stream, spans = _stream(sp, docs)
    table = byte_table(sp, sp.vocab_size())
    counts = _count(stream, table)
    for doc, (a, b) in zip(docs, spans):
        assert sp.decode(stream[a:b].tolist()) == " ".join(doc.split())
        assert counts[a:b].sum().item() == _text_bytes(doc), doc
    total = sum(_text_bytes(d) for d in docs)
    assert counts.sum().item() == total
    return stream, table, total


def _mutant_tables(sp, table):
    """The byte tables of known bugs, each built the buggy way."""
    n = sp.vocab_size()
    byte_ids = [i for i in range(n) if sp.is_byte(i)]
    control = [i for i in range(n) if sp.is_control(i)]
    double_space = ByteTable(table.base_bytes + table.has_leading_space.to(torch.int16),
                             table.has_leading_space, table.is_boundary)
    fallback3 = table.base_bytes.clone()
    fallback3[byte_ids] = 3
    fallback_text = table.base_bytes.clone()
    fallback_text[byte_ids] = torch.tensor([len(sp.id_to_piece(i)) for i in byte_ids], dtype=torch.int16)
    control_text = table.base_bytes.clone()
    control_text[control] = torch.tensor([len(sp.id_to_piece(i)) for i in control], dtype=torch.int16)
    return {
        "leading space counted twice": double_space,
        "byte fallback as 3 bytes": ByteTable(fallback3, table.has_leading_space, table.is_boundary),
        "byte fallback as piece text": ByteTable(fallback_text, table.has_leading_space, table.is_boundary),
        "BOS/control pieces counted": ByteTable(control_text, table.has_leading_space, table.is_boundary),
    }


@pytest.mark.parametrize("which", ["trained", "official_8192"])
def test_bytes_equal_utf8_with_byte_fallback(which, trained_sp, request):
    sp = trained_sp if which == "trained" else load_tokenizer(request.getfixturevalue("sp8192_path"))
    stream, table, total = _check_matches_text(sp, DOCS)
    assert any(sp.is_byte(i) for i in stream.tolist())  # the suite really exercises byte fallback
    for bug, mutant in _mutant_tables(sp, table).items():
        assert _count(stream, mutant).sum().item() != total, bug


def test_bytes_official_1024(sp1024_path):
    sp = load_tokenizer(sp1024_path)
    known = [d for d in DOCS if sp.unk_id() not in sp.encode(d)]
    assert len(known) >= 4  # the ASCII documents (the 1024 model has no byte fallback)
    stream, table, total = _check_matches_text(sp, known)
    for bug, mutant in _mutant_tables(sp, table).items():
        if "fallback" not in bug:
            assert _count(stream, mutant).sum().item() != total, bug


def test_unknown_piece_and_following_space_count_zero(sp1024_path):
    # 1024 model: "café au lait" -> c a f <unk> ▁a u ▁l a it. The unknown é is a boundary worth 0,
    # so the space of "▁a" after it is not counted either: 13 UTF-8 bytes - 2 (é) - 1 (space) = 10.
    sp = load_tokenizer(sp1024_path)
    stream, _ = _stream(sp, ["café au lait"])
    assert sp.unk_id() in stream.tolist()
    assert _count(stream, byte_table(sp, 1024)).sum().item() == 10


def test_space_after_boundary_not_counted(tmp_path):
    """A dummy-prefix tokenizer starts every document with a ``▁`` piece right after BOS; the rule
    must not count that space (the decoded text has none), and ignoring boundaries does."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(" ".join(d.split()) for d in DOCS * 20),
                                   model_writer=model, model_type="bpe", vocab_size=400, byte_fallback=True,
                                   add_dummy_prefix=True, minloglevel=2)
    (tmp_path / "dummy.model").write_bytes(model.getvalue())
    sp = load_tokenizer(tmp_path / "dummy.model")
    stream, table, total = _check_matches_text(sp, DOCS)
    no_boundary = ByteTable(table.base_bytes, table.has_leading_space, torch.zeros_like(table.is_boundary))
    assert _count(stream, no_boundary).sum().item() == total + len(DOCS)


# ----------------------------------------------------------------------------- score_stream


def fake_nll(x, y):
    """A deterministic per-token 'NLL' that depends on the (previous, target) pair only."""
    return ((x * 7 + y * 13) % 17).double() / 4 + 0.25


def brute_force(tokens):
    t = torch.as_tensor(tokens, dtype=torch.int64)
    return fake_nll(t[:-1], t[1:]).sum().item(), t.numel() - 1


@pytest.fixture(scope="module")
def stream_and_table(trained_sp):
    docs = [d for _, d in zip(range(40), iter_documents())]
    stream, _ = _stream(trained_sp, docs)
    return stream[:3001].numpy().astype(np.uint16), byte_table(trained_sp, 384)


@pytest.mark.parametrize("length,seq_len,batch_seqs", [(3001, 64, 4), (3001, 100, 3), (2561, 64, 5),
                                                       (65, 64, 2), (40, 64, 2), (2, 8, 1), (1, 8, 1)])
def test_score_stream_every_target_once(stream_and_table, length, seq_len, batch_seqs):
    tokens, table = stream_and_table
    tokens = tokens[:length]
    nll, count = brute_force(tokens)
    t = torch.from_numpy(tokens.astype(np.int64))
    nbytes = token_bytes(t[:-1], t[1:], table).sum().item()
    total = Score(0, 0, 0.0, 0.0, 0.0)
    for world_size in (1, 2, 3, 4):
        parts = [score_stream(fake_nll, tokens, seq_len=seq_len, batch_seqs=batch_seqs, table=table,
                              rank=r, world_size=world_size) for r in range(world_size)]
        total = Score(sum(p.tokens for p in parts), sum(p.bytes for p in parts), 0.0, 0.0,
                      sum(p.nll for p in parts))
        assert (total.tokens, total.bytes) == (count, nbytes)
        assert total.nll == pytest.approx(nll, rel=1e-12)
    # Mutant (d), the official eval's dropping of the targets past the last full window, fails the
    # count check above on every case whose count is not a multiple of seq_len.


def test_score_stream_values(stream_and_table):
    tokens, table = stream_and_table
    s = score_stream(fake_nll, tokens, seq_len=128, batch_seqs=3, table=table)
    t = torch.from_numpy(tokens.astype(np.int64))
    nbytes = token_bytes(t[:-1], t[1:], table).sum().item()
    nll = brute_force(tokens)[0]
    assert s.loss == pytest.approx(nll / (len(tokens) - 1), rel=1e-12)
    assert s.bpb == pytest.approx(nll / (math.log(2) * nbytes), rel=1e-12)


@pytest.mark.parametrize("length,seq_len,batch_seqs,world_size", [(1000, 64, 3, 1), (1000, 64, 3, 3),
                                                                  (129, 64, 1, 2), (777, 50, 4, 5)])
def test_score_stream_calls_see_each_target_once(length, seq_len, batch_seqs, world_size):
    tokens = torch.arange(length)  # unique ids: a target id is its position
    seen = []

    def recording_nll(x, y):
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape
        assert torch.equal(y, x + 1)  # inputs are the targets' own previous tokens
        seen.append(y.flatten())
        return torch.zeros(y.shape)

    for r in range(world_size):
        score_stream(recording_nll, tokens, seq_len=seq_len, batch_seqs=batch_seqs,
                     byte_counts=torch.ones(length, dtype=torch.int64), rank=r, world_size=world_size)
    got = torch.cat(seen).sort().values
    assert torch.equal(got, torch.arange(1, length))  # mutant (e), overlapping windows, would repeat ids


def test_unigram_yardstick_is_the_targets_entropy_per_byte():
    """``unigram_bpb``: -sum p log2 p over the targets, times targets / bytes (byte rule included)."""
    table = ByteTable(base_bytes=torch.full((4,), 2, dtype=torch.int16), has_leading_space=torch.zeros(4, dtype=torch.bool),
                      is_boundary=torch.zeros(4, dtype=torch.bool))
    tokens = np.array([0, 1, 1, 2, 2])  # targets 1, 1, 2, 2: one bit each, 2 bytes each
    assert unigram_bpb(tokens, table) == pytest.approx(0.5, rel=1e-12)
    table.has_leading_space[2] = True  # targets 2 after a non-boundary token: 3 bytes each
    assert unigram_bpb(tokens, table) == pytest.approx(4 / 10, rel=1e-12)
    tokens = np.array([0, 1, 2, 3, 3])  # p = 1/4, 1/4, 1/2: 1.5 bits; 2 + 3 + 2 + 2 bytes
    assert unigram_bpb(tokens, table) == pytest.approx(1.5 * 4 / 9, rel=1e-12)


def test_byte_sidecar(stream_and_table):
    tokens, table = stream_and_table
    sidecar = np.full(len(tokens), 2, dtype=np.int64)
    s = score_stream(fake_nll, tokens, seq_len=100, batch_seqs=2, byte_counts=sidecar)
    assert s.bytes == 2 * (len(tokens) - 1)
    with pytest.raises(ValueError, match=f"byte_counts has {len(tokens) - 1} entries but the token stream has "
                                         f"{len(tokens)}"):
        score_stream(fake_nll, tokens, seq_len=100, batch_seqs=2, byte_counts=sidecar[1:])
    with pytest.raises(ValueError, match="needs a ByteTable or byte_counts"):
        score_stream(fake_nll, tokens, seq_len=100, batch_seqs=2)


def test_nll_fn_shape_checked(stream_and_table):
    tokens, table = stream_and_table
    with pytest.raises(ValueError, match="nll_fn returned shape"):
        score_stream(lambda x, y: torch.zeros(y.numel()), tokens, seq_len=64, batch_seqs=2, table=table)


def test_window_range_partitions():
    for w in (0, 1, 7, 10):
        for world in (1, 3, 4):
            blocks = [window_range(w, r, world) for r in range(world)]
            assert [i for b in blocks for i in b] == list(range(w))
    with pytest.raises(ValueError, match="rank 2 is outside 0..1"):
        window_range(5, 2, 2)


def test_accumulator_sums_and_guards():
    acc = BpbAccumulator(device="cpu")
    nll = torch.tensor([[0.5, 1.0], [2.0, 0.25]], dtype=torch.bfloat16)
    ids = torch.zeros(2, 2, dtype=torch.int64)
    acc.add(nll, ids, ids, byte_counts=torch.tensor([[1, 2], [3, 4]]))
    acc.add(torch.tensor([1.25]), ids[0, :1], ids[0, :1], byte_counts=torch.tensor([5]))
    acc.all_reduce()
    s = acc.result()
    assert (s.tokens, s.bytes, s.nll) == (5, 15, 5.0)
    assert s.loss == 1.0 and s.bpb == pytest.approx(5.0 / (math.log(2) * 15), rel=1e-15)
    with pytest.raises(RuntimeError, match="after all_reduce"):
        acc.add(nll, ids, ids, byte_counts=ids)
    with pytest.raises(RuntimeError, match="twice"):
        acc.all_reduce()
    with pytest.raises(ValueError, match="needs a ByteTable"):
        BpbAccumulator().add(nll, ids, ids)
    with pytest.raises(ValueError, match="same shape"):
        BpbAccumulator().add(nll, ids[0], ids, byte_counts=ids)
    empty = BpbAccumulator()
    empty.all_reduce()
    assert math.isnan(empty.result().bpb) and empty.result().tokens == 0


def _distributed_worker(rank, world_size, port, tokens, table, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        s = score_stream(fake_nll, tokens, seq_len=64, batch_seqs=3, table=table, rank=rank, world_size=world_size)
        out[rank] = torch.tensor([s.tokens, s.bytes, s.nll], dtype=torch.float64)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_score_stream_all_reduce_two_processes(stream_and_table):
    tokens, table = stream_and_table
    single = score_stream(fake_nll, tokens, seq_len=64, batch_seqs=3, table=table)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = torch.zeros(2, 3, dtype=torch.float64).share_memory_()
    mp.spawn(_distributed_worker, args=(2, port, tokens, table, out), nprocs=2)
    for rank in range(2):  # every rank holds the global totals
        assert out[rank].tolist() == pytest.approx([single.tokens, single.bytes, single.nll], rel=1e-12)
