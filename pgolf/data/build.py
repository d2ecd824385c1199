"""Building token shards from documents (the work behind ``pgolf data``).

Every document becomes ``[BOS] + sp.encode(text)`` (no EOS), as in the official data. The
first ``num_val_docs`` documents are the validation split, the rest the training split; each
split is cut into shards of ``shard_tokens`` tokens (a document may straddle two shards)
named ``<prefix>val_000000.bin`` / ``<prefix>train_000000.bin`` (official prefix
``fineweb_``). A corpus with fewer than ``2 * num_val_docs`` documents instead gives the
first ``max(1, min(num_val_docs, num_docs // 10))`` documents (10 %) to validation; the
manifest and the log say so.

``manifest.json``, written last, records the tokenizer (file name, SHA-256, vocabulary),
document and token counts per split, and the name, token count and SHA-256 of every shard.

Nothing in the output folder changes until the new build is complete: everything (a trained
tokenizer included) is written into a staging folder inside it (:func:`staged`), and only then
swapped in (the old manifest removed first, then the previous build's shards, then the new
files moved in, the manifest last). A bad input file, a bad JSONL line or a kill during the build
leaves the previous build as it was.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import platform
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from pgolf.data import corpus
from pgolf.data.manifest import FORMAT, MANIFEST, DataError, file_sha256  # noqa: F401 (re-exported)
from pgolf.data.shards import ShardError, shard_header, shard_token_count, write_shard
from pgolf.data.tokenizer import TokenizerError, load_tokenizer, train_tokenizer
from pgolf.util.atomic import atomic_write_text
from pgolf.util.progress import progress as progress_bar

log = logging.getLogger(__name__)

VAL_FRACTION_DIVISOR = 10  # small corpora: one document in ten is validation
_ENCODE_BATCH = 256


def val_doc_count(num_docs: int, num_val_docs: int) -> int:
    """Validation documents for a corpus of ``num_docs``: ``num_val_docs`` when the corpus has at
    least twice as many, else ``max(1, min(num_val_docs, num_docs // 10))``."""
    if num_docs < 2:
        raise DataError(f"need at least 2 documents (one validation, one training), got {num_docs}")
    if num_val_docs < 1:
        raise DataError(f"num_val_docs must be >= 1, got {num_val_docs}")
    if num_docs >= 2 * num_val_docs:
        return num_val_docs
    return max(1, min(num_val_docs, num_docs // VAL_FRACTION_DIVISOR))


class _ShardWriter:
    """Accumulates documents into ``<stem>_%06d.bin`` shards of ``shard_tokens`` tokens."""

    def __init__(self, out_dir: Path, stem: str, shard_tokens: int):
        self.out_dir, self.stem = out_dir, stem
        self.buf = np.zeros(shard_tokens, dtype="<u2")
        self.fill = 0
        self.docs = 0
        self.tokens = 0
        self.shards: list[dict[str, Any]] = []

    def add(self, doc: np.ndarray) -> None:
        self.docs += 1
        self.tokens += doc.size
        while doc.size:
            take = min(doc.size, self.buf.size - self.fill)
            self.buf[self.fill:self.fill + take] = doc[:take]
            self.fill += take
            doc = doc[take:]
            if self.fill == self.buf.size:
                self._flush()

    def _flush(self) -> None:
        tokens = self.buf[:self.fill]
        name = f"{self.stem}_{len(self.shards):06d}.bin"
        write_shard(self.out_dir / name, tokens)
        sha = hashlib.sha256(shard_header(tokens.size))
        sha.update(memoryview(tokens).cast("B"))
        self.shards.append({"file": name, "tokens": int(tokens.size), "sha256": sha.hexdigest()})
        self.fill = 0

    def close(self) -> dict[str, Any]:
        if self.fill:
            self._flush()
        return {"docs": self.docs, "tokens": self.tokens, "shards": self.shards}


def _encode(sp: Any, documents: Iterable[str], bos_id: int) -> Iterator[np.ndarray]:
    it = iter(documents)
    while batch := list(itertools.islice(it, _ENCODE_BATCH)):
        for ids in sp.encode(batch):
            yield np.array([bos_id, *ids], dtype="<u2")


STAGING_PREFIX = ".pgolf-staging-"


def _previous_outputs(out: Path, prefix: str) -> list[Path]:
    """A previous build's manifest and shards (any file named like a shard of ``prefix``)."""
    pattern = re.compile(rf"{re.escape(prefix)}(train|val)_\d{{6}}\.bin")
    return [f for f in out.iterdir() if f.name == MANIFEST or pattern.fullmatch(f.name)]


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def staged(out_dir: str | os.PathLike, *, name_prefix: str) -> Iterator[Path]:
    """A fresh staging folder inside ``out_dir`` to build into; when the block succeeds its files
    replace the previous build (manifest and ``name_prefix`` shards) in ``out_dir``, the new
    manifest last. When the block fails, ``out_dir`` is left exactly as it was (staging folders
    of killed builds, whose pid no longer runs, are removed the next time)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"output {out} is a file, not a folder; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        for left in out.glob(f"{STAGING_PREFIX}*"):  # a killed build's leftovers
            if not _pid_alive(left.name[len(STAGING_PREFIX):]):
                shutil.rmtree(left, ignore_errors=True)
        stage = out / f"{STAGING_PREFIX}{os.getpid()}"
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir()
    except OSError as e:
        raise DataError(f"cannot write into {out}: {e.strerror or e}; choose a writable --out") from None
    try:
        yield stage
        old = _previous_outputs(out, name_prefix)
        if any(f.name != MANIFEST for f in old):
            log.warning("replacing the previous build in %s (%d files)", out, len(old))
        for f in sorted(old, key=lambda f: f.name != MANIFEST):  # the manifest goes first
            f.unlink()
        new = sorted(stage.iterdir(), key=lambda f: f.name == MANIFEST)  # the manifest comes last
        for f in new:
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _load_checked(tokenizer_path: str | os.PathLike, vocab_size: int | None, bos_id: int) -> Any:
    try:
        sp = load_tokenizer(tokenizer_path, vocab_size=vocab_size)
    except TokenizerError as e:
        raise DataError(str(e)) from None
    if sp.vocab_size() > 65536:
        raise DataError(f"tokenizer {tokenizer_path} has {sp.vocab_size()} pieces; uint16 shards hold at most 65536")
    if sp.bos_id() != bos_id:
        raise DataError(f"tokenizer {tokenizer_path} has BOS id {sp.bos_id()}, but bos_id {bos_id} was asked for")
    return sp


def build_dataset(documents: Iterable[str], out_dir: str | os.PathLike, *, tokenizer_path: str | os.PathLike,
                  vocab_size: int | None = None, num_val_docs: int = 50_000,
                  shard_tokens: int = 100_000_000, bos_id: int = 1, name_prefix: str = "fineweb_",
                  progress: bool = True, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Tokenize ``documents`` into validation and training shards in ``out_dir``; returns the manifest.

    See the module docstring for the split rule and file names. ``vocab_size``, when given,
    must equal the tokenizer's; the tokenizer must have a standalone ``▁`` piece and BOS id
    ``bos_id``; violations raise :class:`DataError`. The build is staged (:func:`staged`): the
    previous manifest and shards are replaced only once the new ones are complete. ``extra``
    entries are added to the manifest.
    """
    with staged(out_dir, name_prefix=name_prefix) as stage:
        return write_dataset(documents, stage, tokenizer_path=tokenizer_path, vocab_size=vocab_size,
                             num_val_docs=num_val_docs, shard_tokens=shard_tokens, bos_id=bos_id,
                             name_prefix=name_prefix, progress=progress, extra=extra)


def write_dataset(documents: Iterable[str], out: Path, *, tokenizer_path: str | os.PathLike,
                  vocab_size: int | None = None, num_val_docs: int = 50_000, shard_tokens: int = 100_000_000,
                  bos_id: int = 1, name_prefix: str = "fineweb_", progress: bool = True,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """:func:`build_dataset` into the folder ``out`` (a staging folder) as it is, unstaged."""
    if shard_tokens < 1:
        raise DataError(f"shard_tokens must be >= 1, got {shard_tokens}")
    if num_val_docs < 1:
        raise DataError(f"num_val_docs must be >= 1, got {num_val_docs}")
    sp = _load_checked(tokenizer_path, vocab_size, bos_id)
    encoded = _encode(sp, progress_bar(documents, desc="tokenizing", unit="doc", enabled=progress), bos_id)
    head = list(itertools.islice(encoded, 2 * num_val_docs))
    n_val = val_doc_count(len(head), num_val_docs)
    if n_val < num_val_docs:
        rule = f"first {n_val} documents: 1 in {VAL_FRACTION_DIVISOR} (corpus has fewer than {2 * num_val_docs})"
        log.warning("validation split: %s", rule)
    else:
        rule = f"first {n_val} documents"
    splits = {}
    for split, docs in (("val", head[:n_val]), ("train", itertools.chain(head[n_val:], encoded))):
        writer = _ShardWriter(out, f"{name_prefix}{split}", shard_tokens)
        for doc in docs:
            writer.add(doc)
        splits[split] = writer.close()
    manifest = {
        "format": FORMAT,
        "tokenizer": {"name": Path(tokenizer_path).name, "sha256": file_sha256(tokenizer_path),
                      "vocab_size": sp.vocab_size()},
        "bos_id": bos_id, "name_prefix": name_prefix, "shard_tokens": shard_tokens,
        "validation": {"requested_docs": num_val_docs, "docs": n_val, "rule": rule},
        "splits": splits,
        **(extra or {}),
    }
    _write_json(out / MANIFEST, manifest)
    return manifest


def read_manifest(out_dir: str | os.PathLike) -> dict[str, Any]:
    """Load ``out_dir/manifest.json`` and check that every shard it lists is present and intact
    (size and SHA-256) and that the tokenizer beside it, if any, matches; raises :class:`DataError`."""
    out = Path(out_dir)
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except FileNotFoundError:
        raise DataError(f"{out / MANIFEST} does not exist") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{out / MANIFEST} is not valid JSON: {e}") from None
    if manifest.get("format") != FORMAT:
        raise DataError(f"{out / MANIFEST} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            path = out / shard["file"]
            try:
                n = shard_token_count(path)
            except ShardError as e:
                raise DataError(str(e)) from None
            if n != shard["tokens"] or file_sha256(path) != shard["sha256"]:
                raise DataError(f"shard {path} differs from {out / MANIFEST}")
    tok = out / manifest["tokenizer"]["name"]
    if tok.is_file() and file_sha256(tok) != manifest["tokenizer"]["sha256"]:
        raise DataError(f"tokenizer {tok} differs from {out / MANIFEST}")
    return manifest


def build_embedded_dataset(out_dir: str | os.PathLike, *, vocab_size: int = 512, num_val_docs: int = 50_000,
                           shard_tokens: int = 100_000_000, max_docs: int | None = None,
                           progress: bool = True) -> dict[str, Any]:
    """Train a tokenizer on the embedded corpus (:mod:`pgolf.data.corpus`) and shard it into ``out_dir``.

    Writes ``tokenizer.model``, ``train_%06d.bin``, ``val_%06d.bin`` (no ``fineweb_`` prefix)
    and ``manifest.json``. The tokenizer is trained on the training documents only. Same
    Python version and arguments give byte-identical files; when ``out_dir`` already holds an
    intact build with the same Python version, vocabulary, corpus SHA-256 and arguments it is
    returned without rebuilding. ``max_docs`` keeps only the first documents (for tests).
    """
    docs = list(corpus.iter_documents())[:max_docs]
    key = {"python": platform.python_version(), "corpus_sha256": corpus.corpus_sha256(docs),
           "vocab_size": vocab_size, "num_val_docs": num_val_docs, "shard_tokens": shard_tokens,
           "max_docs": max_docs}
    out = Path(out_dir)
    try:
        existing = read_manifest(out)
        if existing.get("embedded") == key and (out / "tokenizer.model").is_file():
            return existing
    except DataError:
        pass
    n_val = val_doc_count(len(docs), num_val_docs)
    with staged(out, name_prefix="") as stage:
        try:
            tokenizer = train_tokenizer(docs[n_val:], vocab_size, stage / "tokenizer")
        except TokenizerError as e:
            raise DataError(str(e)) from None
        return write_dataset(docs, stage, tokenizer_path=tokenizer, vocab_size=vocab_size, num_val_docs=num_val_docs,
                             shard_tokens=shard_tokens, name_prefix="", progress=progress, extra={"embedded": key})


def read_documents(paths: Iterable[str | os.PathLike]) -> Iterator[str]:
    """Yield documents from files in order: a ``.txt`` file is one document; a ``.jsonl`` file
    holds one JSON object per line with a string ``text`` field (blank lines are skipped).
    Errors name the file, and the line for JSONL."""
    for p in map(Path, paths):
        if p.suffix not in (".txt", ".jsonl"):
            raise DataError(f"{p}: unsupported input (expected .txt, one document per file, or .jsonl)")
        try:
            if p.suffix == ".txt":
                yield p.read_text(encoding="utf-8")
                continue
            with open(p, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{p}:{lineno}: invalid JSON: {e}") from None
                    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                        raise DataError(f"{p}:{lineno}: expected an object with a string 'text' field")
                    yield obj["text"]
        except FileNotFoundError:
            raise DataError(f"{p}: no such file") from None
        except UnicodeDecodeError as e:
            raise DataError(f"{p}: not UTF-8 text: {e}") from None
