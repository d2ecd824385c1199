"""The embedded corpus, shard building, the manifest, and the ``pgolf data`` subcommand."""
import argparse
import io
import json
import platform
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from pgolf.data import build as dataset, corpus
from pgolf.data.corpus import corpus_sha256, iter_documents
from pgolf.cli.data import add_arguments, run
from pgolf.data.build import (DataError, build_dataset, build_embedded_dataset, read_documents, read_manifest,
                              val_doc_count)
from pgolf.util.progress import progress
from pgolf.data.shards import load_tokens, read_shard
from pgolf.data.tokenizer import load_tokenizer

SMALL = dict(vocab_size=400, max_docs=300, shard_tokens=20_000, progress=False)


@pytest.fixture(scope="module")
def docs():
    return list(iter_documents())


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    out = tmp_path_factory.mktemp("embedded")
    return out, build_embedded_dataset(out, **SMALL)


def test_corpus_is_deterministic_and_large(docs):
    from pydoc_data.topics import topics

    assert docs[:len(topics)] == [topics[k] for k in sorted(topics)]
    assert all(isinstance(d, str) and d.strip() for d in docs)
    assert sum(len(d.encode("utf-8")) for d in docs) > 3_000_000
    assert corpus_sha256(docs) == corpus_sha256(iter(docs)) != corpus_sha256(docs[1:])


def test_corpus_matches_golden_for_this_python():
    """Same CPython version, same documents: pinned across processes and machines (and with torch,
    which patches some stdlib functions, already imported by conftest, and pytest, which
    replaces sys.unraisablehook)."""
    golden = json.loads((Path(__file__).parent / "golden" / "embedded_corpus_sha256.json").read_text())
    version = platform.python_version()
    if version not in golden:
        pytest.skip(f"no golden embedded-corpus hash for Python {version}; add corpus_sha256(iter_documents())")
    assert corpus_sha256(corpus._generate()) == golden[version]


def test_val_doc_count_rule():
    assert val_doc_count(100_000, 50_000) == 50_000
    assert val_doc_count(99_999, 50_000) == 9_999
    assert val_doc_count(5, 50_000) == 1
    assert val_doc_count(50, 3) == 3
    with pytest.raises(DataError, match="at least 2 documents"):
        val_doc_count(1, 10)


def test_embedded_build_layout(embedded, docs):
    out, manifest = embedded
    assert (out / "tokenizer.model").is_file()
    assert manifest["validation"]["docs"] == 30 and "1 in 10" in manifest["validation"]["rule"]
    val, train = manifest["splits"]["val"], manifest["splits"]["train"]
    assert (val["docs"], train["docs"]) == (30, 270)
    assert [s["file"] for s in train["shards"]] == [f"train_{i:06d}.bin" for i in range(len(train["shards"]))]
    assert len(train["shards"]) > 1 and all(s["tokens"] == 20_000 for s in train["shards"][:-1])
    sp = load_tokenizer(out / "tokenizer.model", vocab_size=400)
    expected = [t for d in docs[:30] for t in [1, *sp.encode(d)]]
    assert load_tokens(str(out / "val_*.bin"), vocab_size=400).tolist() == expected
    assert sum(s["tokens"] for s in train["shards"]) == train["tokens"] == load_tokens(str(out / "train_*.bin")).size
    assert json.loads((out / "manifest.json").read_text()) == manifest == read_manifest(out)


def test_embedded_build_is_byte_identical_and_idempotent(embedded, tmp_path, monkeypatch):
    out, manifest = embedded
    again = build_embedded_dataset(tmp_path, **SMALL)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in tmp_path.iterdir())
    for name in names:
        assert (out / name).read_bytes() == (tmp_path / name).read_bytes(), name
    assert again == manifest

    def no_training(*args, **kwargs):
        raise AssertionError("an intact build must not be rebuilt")

    monkeypatch.setattr(dataset, "train_tokenizer", no_training)
    assert build_embedded_dataset(tmp_path, **SMALL) == manifest
    with pytest.raises(AssertionError, match="must not be rebuilt"):  # other arguments do rebuild
        build_embedded_dataset(tmp_path, **{**SMALL, "max_docs": 299})


def test_read_manifest_detects_damage(embedded, tmp_path):
    out, manifest = embedded
    for p in out.iterdir():
        (tmp_path / p.name).write_bytes(p.read_bytes())
    shard = tmp_path / manifest["splits"]["train"]["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"shard {shard} differs"):
        read_manifest(tmp_path)


def test_build_dataset_splits_and_straddles(embedded, docs, tmp_path):
    tokenizer = embedded[0] / "tokenizer.model"
    sp = load_tokenizer(tokenizer)
    stale = tmp_path / "fineweb_train_000099.bin"
    stale.write_bytes(b"old")
    manifest = build_dataset(docs[:12], tmp_path, tokenizer_path=tokenizer, vocab_size=400, num_val_docs=3,
                             shard_tokens=500, progress=False)
    assert not stale.exists()
    assert manifest["validation"] == {"requested_docs": 3, "docs": 3, "rule": "first 3 documents"}
    assert manifest["tokenizer"]["name"] == "tokenizer.model" and manifest["tokenizer"]["vocab_size"] == 400
    for split, part in (("val", docs[:3]), ("train", docs[3:12])):
        expected = [t for d in part for t in [1, *sp.encode(d)]]
        files = sorted(tmp_path.glob(f"fineweb_{split}_*.bin"))
        assert [f.name for f in files] == [s["file"] for s in manifest["splits"][split]["shards"]]
        assert np.concatenate([read_shard(f) for f in files]).tolist() == expected
        assert manifest["splits"][split]["tokens"] == len(expected)


def _no_space_tokenizer(path):
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["helloworldfoobarbaz"] * 50), model_writer=model,
                                   model_type="bpe", vocab_size=24, add_dummy_prefix=False, minloglevel=2)
    path.write_bytes(model.getvalue())
    return path


def test_build_refuses_bad_tokenizers(embedded, tmp_path):
    with pytest.raises(DataError, match="no standalone '▁' piece"):
        build_dataset(["a b", "c d"], tmp_path, tokenizer_path=_no_space_tokenizer(tmp_path / "x.model"))
    tokenizer = embedded[0] / "tokenizer.model"
    with pytest.raises(DataError, match="has 400 pieces but vocab_size 1024"):
        build_dataset(["a b", "c d"], tmp_path, tokenizer_path=tokenizer, vocab_size=1024)
    with pytest.raises(DataError, match="BOS id 1, but bos_id 2"):
        build_dataset(["a b", "c d"], tmp_path, tokenizer_path=tokenizer, bos_id=2)


def test_read_documents(tmp_path):
    (tmp_path / "a.txt").write_text("first\n\ndocument\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"text": "two"}\n\n{"text": "three", "id": 3}\n', encoding="utf-8")
    assert list(read_documents([tmp_path / "a.txt", tmp_path / "b.jsonl"])) == ["first\n\ndocument\n", "two", "three"]
    cases = {"c.jsonl": ('{"text": "ok"}\n{"txt": "x"}\n', r"c.jsonl:2: expected an object with a string 'text'"),
             "d.jsonl": ('{"text": "ok"}\n\n{bad\n', r"d.jsonl:3: invalid JSON"),
             "e.csv": ("x", r"e.csv: unsupported input")}
    for name, (content, message) in cases.items():
        (tmp_path / name).write_text(content)
        with pytest.raises(DataError, match=message):
            list(read_documents([tmp_path / name]))
    with pytest.raises(DataError, match="missing.txt: no such file"):
        list(read_documents([tmp_path / "missing.txt"]))


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_train_tokenizer_end_to_end(docs, tmp_path, capsys):
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[:200]), encoding="utf-8")
    out = tmp_path / "out"
    assert run(_parse([str(corpus), "--out", str(out), "--train-tokenizer", "--vocab-size", "400",
                       "--num-val-docs", "20", "--shard-tokens", "50000", "--no-progress"])) == 0
    manifest = read_manifest(out)
    assert manifest["validation"]["docs"] == 20 and manifest["splits"]["train"]["docs"] == 180
    assert (out / "tokenizer.model").is_file() and (out / "fineweb_val_000000.bin").is_file()
    assert "train: 180 documents" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--tokenizer", "TOK", "--vocab-size", "512"], "has 400 pieces but vocab_size 512"),
    (["--tokenizer", "TOK", "--train-tokenizer", "--vocab-size", "400"], "exactly one of"),
    (["--train-tokenizer"], "needs --vocab-size"),
    ([], "exactly one of"),
])
def test_cli_errors_return_2(embedded, tmp_path, capsys, argv, message):
    (tmp_path / "a.txt").write_text("some text here")
    argv = [a.replace("TOK", str(embedded[0] / "tokenizer.model")) for a in argv]
    assert run(_parse([str(tmp_path / "a.txt"), "--out", str(tmp_path / "o"), *argv])) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_cli_embedded_rejects_inputs(tmp_path, capsys):
    assert run(_parse(["x.txt", "--embedded", "--out", str(tmp_path)])) == 2
    assert "--embedded takes no input files" in capsys.readouterr().err


def test_progress_only_when_interactive(monkeypatch):
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    monkeypatch.setenv("CI", "true")
    assert progress(range(3), desc="x").disable
    monkeypatch.delenv("CI")
    bar = progress(total=3, desc="x")
    assert not bar.disable
    bar.close()
    assert progress(range(3), enabled=False).disable
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    assert list(progress(range(3))) == [0, 1, 2]
