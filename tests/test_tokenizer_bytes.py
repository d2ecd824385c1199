"""Tokenizer loading checks, the byte table, and deterministic tokenizer training."""
import io

import pytest
import sentencepiece as spm
import torch

from pgolf.data.corpus import iter_documents
from pgolf.data.tokenizer import SPACE, TokenizerError, byte_table, load_tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def small_docs():
    return [d for _, d in zip(range(120), iter_documents())]


@pytest.fixture(scope="module")
def trained(small_docs, tmp_path_factory):
    return train_tokenizer(small_docs, 384, tmp_path_factory.mktemp("tok") / "tok")


def _train_raw(tmp_path, lines, **options):
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, model_type="bpe",
                                   minloglevel=2, **options)
    path = tmp_path / "raw.model"
    path.write_bytes(model.getvalue())
    return path


def test_official_1024_contents(sp1024_path):
    sp = load_tokenizer(sp1024_path, vocab_size=1024)
    assert (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2, 3)
    assert sp.id_to_piece(sp.piece_to_id(SPACE)) == SPACE
    table = byte_table(sp, 1024)
    assert table.base_bytes.shape == (1024,)
    assert table.is_boundary[:4].tolist() == [True] * 4 and table.base_bytes[:4].tolist() == [0] * 4
    the = sp.piece_to_id(SPACE + "the")
    assert (table.base_bytes[the].item(), table.has_leading_space[the].item()) == (3, True)
    space = sp.piece_to_id(SPACE)
    assert (table.base_bytes[space].item(), table.has_leading_space[space].item()) == (0, True)


def test_official_8192_byte_pieces_are_one_byte(sp8192_path):
    sp = load_tokenizer(sp8192_path, vocab_size=8192)
    table = byte_table(sp, 8192)
    byte_ids = [i for i in range(sp.vocab_size()) if sp.is_byte(i)]
    assert len(byte_ids) == 256 and sp.id_to_piece(byte_ids[0xE4]) == "<0xE4>"
    assert set(table.base_bytes[byte_ids].tolist()) == {1}
    assert not table.has_leading_space[byte_ids].any() and not table.is_boundary[byte_ids].any()


def test_table_padded_beyond_vocab_is_boundary(sp1024_path):
    sp = load_tokenizer(sp1024_path)
    table = byte_table(sp, 1100)
    assert table.base_bytes.shape == table.is_boundary.shape == table.has_leading_space.shape == (1100,)
    assert table.is_boundary[1024:].all() and (table.base_bytes[1024:] == 0).all()
    assert table.base_bytes.dtype == torch.int16
    assert table.is_boundary.dtype == table.has_leading_space.dtype == torch.bool


def test_load_missing_file(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(tmp_path / "nope.model")


def test_load_not_a_model(tmp_path):
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="not a SentencePiece model"):
        load_tokenizer(tmp_path / "junk.model")


def test_vocab_mismatch_names_both(trained):
    with pytest.raises(TokenizerError, match="has 384 pieces but vocab_size 512"):
        load_tokenizer(trained, vocab_size=512)


def test_refuses_tokenizer_without_standalone_space(tmp_path):
    path = _train_raw(tmp_path, ["helloworldfoobarbaz"] * 50, vocab_size=24, add_dummy_prefix=False)
    with pytest.raises(TokenizerError, match="no standalone '▁' piece"):
        load_tokenizer(path)


def test_trained_matches_official_conventions(trained, small_docs):
    sp = load_tokenizer(trained, vocab_size=384)
    assert (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2, 3)
    assert sum(sp.is_byte(i) for i in range(sp.vocab_size())) == 256
    assert not sp.id_to_piece(sp.encode("hello")[0]).startswith(SPACE)  # no dummy prefix, as official
    assert sp.encode("2024") == [sp.piece_to_id(c) for c in "2024"]  # split digits
    assert sp.decode(sp.encode("漢字 emoji 😀")) == "漢字 emoji 😀"  # byte fallback round-trips


def test_training_is_deterministic(trained, small_docs, tmp_path):
    again = train_tokenizer(small_docs, 384, tmp_path / "again")
    assert again.name == "again.model" and again.read_bytes() == trained.read_bytes()


def test_train_from_file_and_errors(tmp_path, small_docs):
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(small_docs[:60]), encoding="utf-8")
    assert load_tokenizer(train_tokenizer(text, 400, tmp_path / "f"), vocab_size=400).vocab_size() == 400
    with pytest.raises(TokenizerError, match="does not exist"):
        train_tokenizer(tmp_path / "missing.txt", 400, tmp_path / "g")
    with pytest.raises(TokenizerError, match="training a 100000-piece tokenizer failed"):
        train_tokenizer(small_docs[:5], 100_000, tmp_path / "h")
