"""``pgolf data``: build train/val shards (and optionally a tokenizer) from text or the embedded corpus."""
from __future__ import annotations

import argparse
import itertools
import sys
from typing import Any

from pgolf.cli.args import at_least
from pgolf.data.build import (
    DataError,
    build_dataset,
    build_embedded_dataset,
    read_documents,
    staged,
    val_doc_count,
    write_dataset,
)
from pgolf.data.shards import ShardError
from pgolf.data.tokenizer import TokenizerError, train_tokenizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``pgolf data`` options to ``parser``."""
    parser.add_argument("inputs", nargs="*", metavar="FILE",
                        help=".txt (one document per file) or .jsonl (one {\"text\": ...} per line) files")
    parser.add_argument("--embedded", action="store_true",
                        help="use the corpus embedded in CPython (no download) and train its tokenizer")
    parser.add_argument("--out", help="output directory (default for --embedded: data/embedded)")
    parser.add_argument("--tokenizer", metavar="PATH", help="an existing SentencePiece model")
    parser.add_argument("--train-tokenizer", action="store_true",
                        help="train a BPE tokenizer on the training documents into OUT/tokenizer.model")
    parser.add_argument("--vocab-size", type=at_least(int, 1), metavar="N",
                        help="tokenizer vocabulary (required with --train-tokenizer; checked with --tokenizer; "
                             "--embedded default 512)")
    parser.add_argument("--num-val-docs", type=at_least(int, 1), default=50_000, metavar="N",
                        help="the first N documents are validation (default 50000; small corpora use 1 in 10)")
    parser.add_argument("--shard-tokens", type=at_least(int, 1), default=100_000_000, metavar="N",
                        help="tokens per shard (default 100000000)")
    parser.add_argument("--max-docs", type=at_least(int, 1), metavar="N", help="--embedded: keep only the first N documents")
    parser.add_argument("--no-progress", action="store_true", help="never draw a progress bar")


def _build_from_args(args: argparse.Namespace) -> dict[str, Any]:
    common = {"num_val_docs": args.num_val_docs, "shard_tokens": args.shard_tokens,
              "progress": not args.no_progress}
    if args.embedded:
        if args.inputs or args.tokenizer or args.train_tokenizer:
            raise DataError("--embedded takes no input files, --tokenizer or --train-tokenizer")
        return build_embedded_dataset(args.out or "data/embedded", vocab_size=args.vocab_size or 512,
                                      max_docs=args.max_docs, **common)
    if not args.inputs:
        raise DataError("give input .txt/.jsonl files, or --embedded")
    if not args.out:
        raise DataError("--out is required")
    if args.max_docs is not None:
        raise DataError("--max-docs applies to --embedded only")
    if bool(args.tokenizer) == bool(args.train_tokenizer):
        raise DataError("give exactly one of --tokenizer PATH and --train-tokenizer")
    if not args.train_tokenizer:
        return build_dataset(read_documents(args.inputs), args.out, tokenizer_path=args.tokenizer,
                             vocab_size=args.vocab_size, **common)
    if not args.vocab_size:
        raise DataError("--train-tokenizer needs --vocab-size")
    n_val = val_doc_count(sum(1 for _ in read_documents(args.inputs)), args.num_val_docs)
    with staged(args.out, name_prefix="fineweb_") as stage:
        try:
            tokenizer = train_tokenizer(itertools.islice(read_documents(args.inputs), n_val, None),
                                        args.vocab_size, stage / "tokenizer")
        except TokenizerError as e:
            raise DataError(str(e)) from None
        return write_dataset(read_documents(args.inputs), stage, tokenizer_path=tokenizer,
                             vocab_size=args.vocab_size, **common)


def run(args: argparse.Namespace) -> int:
    """Run ``pgolf data``: 0 on success; prints ``error: ...`` and returns 2 on bad input (the
    output folder's previous build is then untouched)."""
    try:
        manifest = _build_from_args(args)
    except (DataError, ShardError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for name, split in sorted(manifest["splits"].items()):
        print(f"{name}: {split['docs']} documents, {split['tokens']} tokens, {len(split['shards'])} shard(s)")
    return 0
