"""Which tokenizer made a dataset, and whether a model may be trained or scored on it.

Token ids mean nothing without the tokenizer that produced them: shards made by a 512-piece
tokenizer, read with a 1024-piece byte table, give a val_bpb that is simply wrong. So identity
travels with the data and the weights:

* a dataset folder written by ``pgolf data`` holds ``manifest.json`` naming its tokenizer
  (SHA-256 of the model file, vocabulary) and every shard of each split (name, token count);
  :func:`check_dataset` refuses shards made by another tokenizer, shards the manifest does not
  list (stale or foreign), shards it lists that are missing (an incomplete folder), and a folder
  without a manifest unless the caller reads it ``verify=False`` (official downloads have none);
* :func:`check_disjoint` refuses a training split that shares a file, or a file's exact content,
  with the validation split (training on validation), and shards a manifest assigns to the
  other split;
* :func:`run_identity` is what a checkpoint and an artifact record (tokenizer identity, vocab,
  ``seq_len``, validation settings), and :func:`check_tokenizer` compares a recorded identity
  with the tokenizer about to be used.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pgolf.data.manifest import FORMAT, MANIFEST, DataError, file_sha256
from pgolf.data.shards import shard_files, shard_token_count


@dataclass(frozen=True)
class TokenizerIdentity:
    """A tokenizer as the data knows it: file name, SHA-256 of the file, number of pieces."""

    name: str
    sha256: str
    vocab_size: int

    def describe(self) -> str:
        return f"{self.name} (sha256 {self.sha256[:12]}, {self.vocab_size} pieces)"


def tokenizer_identity(path: str | os.PathLike, vocab_size: int) -> TokenizerIdentity:
    """The identity of the tokenizer file at ``path`` with ``vocab_size`` pieces."""
    return TokenizerIdentity(Path(path).name, file_sha256(path), int(vocab_size))


def check_tokenizer(recorded: dict[str, Any] | None, actual: TokenizerIdentity, *, what: str) -> None:
    """Refuse ``actual`` unless it is the tokenizer ``recorded`` (a :func:`run_identity`'s
    ``"tokenizer"`` entry) names; ``what`` says whose record it is (for the message)."""
    if not recorded:
        return
    if recorded.get("sha256") != actual.sha256 or recorded.get("vocab_size") != actual.vocab_size:
        raise DataError(
            f"{what} was made with tokenizer {recorded.get('name')} (sha256 {str(recorded.get('sha256'))[:12]}, "
            f"{recorded.get('vocab_size')} pieces) but the tokenizer given is {actual.describe()}; token ids would "
            "mean other pieces and the score would be wrong: use the tokenizer it was made with")


@dataclass(frozen=True)
class Dataset:
    """The shards one glob matched, and what their manifests say about them.

    ``splits`` maps each shard's resolved path to the split its manifest lists it in (empty when
    read unverified); ``sha256`` maps it to the manifest's content hash."""

    pattern: str
    files: tuple[Path, ...]
    splits: dict[Path, str]
    sha256: dict[Path, str]
    verified: bool


def _load_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e}); rebuild the folder with pgolf data") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path} is not a pgolf shard manifest (format {FORMAT!r}); rebuild the folder with "
                        "pgolf data")
    return manifest


def check_dataset(pattern: str, tokenizer: TokenizerIdentity, *, verify: bool = True,
                  small_val_split: bool = True) -> Dataset:
    """The shards matching ``pattern``, checked against the manifest of their folder.

    With ``verify`` every folder must hold a manifest made with ``tokenizer`` that lists every
    matched shard with its token count, and every shard of the splits touched must exist.
    Without it, folders without a manifest are read as they are (their token ids are still
    checked against the vocabulary as they are read). Without ``small_val_split`` a manifest whose
    validation split holds fewer documents than were asked for (``pgolf data``'s small-corpus rule)
    is refused, as the official data script refuses such a corpus. Raises :class:`DataError`
    naming the file.
    """
    files = tuple(shard_files(pattern))
    splits: dict[Path, str] = {}
    sha: dict[Path, str] = {}
    verified = True
    for folder in sorted({f.parent for f in files}):
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            if verify:
                raise DataError(
                    f"{folder} has no {MANIFEST}, so nothing says which tokenizer made its shards or whether "
                    f"the folder is complete (an interrupted build leaves none). Build it with pgolf data, or "
                    f"read it unverified with --set data.verify_manifest=false (e.g. official downloads)")
            verified = False
            continue
        manifest = _load_manifest(manifest_path)
        made_by = manifest.get("tokenizer", {})
        if made_by.get("sha256") != tokenizer.sha256 or made_by.get("vocab_size") != tokenizer.vocab_size:
            raise DataError(
                f"the shards in {folder} were made by tokenizer {made_by.get('name')} (sha256 "
                f"{str(made_by.get('sha256'))[:12]}, {made_by.get('vocab_size')} pieces) but data.tokenizer is "
                f"{tokenizer.describe()}; use the tokenizer named in {manifest_path}, or rebuild the shards")
        if not small_val_split:
            _refuse_small_val_split(manifest, manifest_path)
        listed = {folder / s["file"]: (name, s) for name, split in manifest.get("splits", {}).items()
                  for s in split.get("shards", [])}
        mine = [f for f in files if f.parent == folder]
        for f in mine:
            if f not in listed:
                raise DataError(f"shard {f} is not listed in {manifest_path}: a stale or foreign file; remove it "
                                "or rebuild the folder with pgolf data")
            name, entry = listed[f]
            if shard_token_count(f) != entry["tokens"]:
                raise DataError(f"shard {f} holds {shard_token_count(f)} tokens but {manifest_path} says "
                                f"{entry['tokens']}; rebuild the folder with pgolf data")
            splits[f.resolve()], sha[f.resolve()] = name, entry["sha256"]
        touched = {listed[m][0] for m in mine}
        for f, (name, _) in listed.items():
            if name in touched and not f.is_file():
                raise DataError(f"{manifest_path} lists {f.name} in the {name} split but the file is missing: the "
                                "folder is incomplete; rebuild it with pgolf data")
    return Dataset(pattern, files, splits, sha, verified)


def _refuse_small_val_split(manifest: dict[str, Any], path: Path) -> None:
    split = manifest.get("validation", {})
    docs, asked = split.get("docs"), split.get("requested_docs")
    if isinstance(docs, int) and isinstance(asked, int) and docs < asked:
        raise DataError(
            f"{path} says its validation split is {docs} documents, cut by pgolf data's small-corpus rule "
            f"(the corpus had fewer than twice the {asked} asked for); the official data script refuses such a corpus, and so does the baseline "
            f"preset (data.small_val_split=false). Rebuild with pgolf data --num-val-docs at most half the "
            f"corpus's documents, or set data.small_val_split=true to train on it anyway")


def check_disjoint(train: Dataset, val: Dataset) -> None:
    """Refuse training data that is (or contains) validation data: a shared file, a file the
    manifest assigns to the other split, or two files with identical bytes."""
    val_paths = {f.resolve() for f in val.files}
    for f in train.files:
        r = f.resolve()
        if r in val_paths:
            raise DataError(f"shard {f} matches both data.train_glob {train.pattern!r} and data.val_glob "
                            f"{val.pattern!r}: training on the validation split would make the score meaningless")
        if train.splits.get(r) == "val":
            raise DataError(f"shard {f} is a validation shard (its manifest says so) but data.train_glob "
                            f"{train.pattern!r} matches it; point data.train_glob at the train shards")
    check_val_split(val)
    sizes: dict[int, list[Path]] = {}
    for f in val.files:
        sizes.setdefault(f.stat().st_size, []).append(f.resolve())
    for f in train.files:
        same_size = sizes.get(f.stat().st_size, [])
        if not same_size:
            continue
        digest = _content_sha(f.resolve(), train)
        for v in same_size:
            if _content_sha(v, val) == digest:
                raise DataError(f"training shard {f} has the same content as validation shard {v}: training on "
                                "the validation split would make the score meaningless")


def check_val_split(val: Dataset) -> None:
    """Refuse validation data that its manifest assigns to the training split."""
    for f in val.files:
        if val.splits.get(f.resolve()) == "train":
            raise DataError(f"shard {f} is a training shard (its manifest says so) but data.val_glob "
                            f"{val.pattern!r} matches it; point data.val_glob at the val shards")


def _content_sha(path: Path, data: Dataset) -> str:
    """The shard's SHA-256 as its manifest records it (header and tokens), else hashed now."""
    return data.sha256.get(path) or file_sha256(path)


def run_identity(*, tokenizer: TokenizerIdentity, tokenizer_path: str, vocab_size: int, seq_len: int,
                 val_glob: str, val_bytes_glob: str, val_batch_size: int) -> dict[str, Any]:
    """What a checkpoint and an artifact record so a later evaluation scores them as trained:
    the tokenizer (identity and the path it was read from), the model vocabulary, the sequence
    length and the validation settings."""
    return {"tokenizer": {**asdict(tokenizer), "path": tokenizer_path}, "vocab_size": vocab_size,
            "seq_len": seq_len, "val_glob": val_glob, "val_bytes_glob": val_bytes_glob,
            "val_batch_size": val_batch_size}
