"""``pgolf submit RUN_DIR --out DIR``: a finished run becomes a records folder
(:mod:`pgolf.submit.folder`)."""
from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run (pgolf train's run directory)")
    p.add_argument("--out", required=True, metavar="DIR", help="the records folder to write")
    p.add_argument("--wrapper", action="store_true",
                   help="ship and count train_gpt.py as a two-line compressed wrapper (minified, LZMA, base85)")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    p.add_argument("--data-path", metavar="DIR",
                   help="the shards' folder the script reads by default (fineweb_{train,val}_*.bin; DATA_PATH overrides)")
    p.add_argument("--tokenizer", metavar="PATH", help="the tokenizer the script reads by default (TOKENIZER_PATH overrides)")
    p.add_argument("--author", default="", help="submission.json author")
    p.add_argument("--github-id", default="", help="submission.json github_id")
    p.add_argument("--blurb", default="", help="submission.json blurb")


def run(args: argparse.Namespace) -> int:
    """Write the folder and print its byte counts; refusals are errors (exit 1) naming the cause."""
    from pgolf.submit.folder import SubmitError, build_submission

    try:
        sub = build_submission(args.run_dir, args.out, wrapper=args.wrapper, overwrite=args.overwrite,
                               data_path=args.data_path, tokenizer=args.tokenizer, author=args.author,
                               github_id=args.github_id, blurb=args.blurb, command=" ".join(["pgolf", *sys.argv[1:]]))
    except SubmitError as e:
        print(f"pgolf submit: {e}", file=sys.stderr)
        return 1
    print(f"{sub.out}: code {sub.bytes_code} bytes + model {sub.bytes_model} bytes = {sub.bytes_total} bytes "
          f"(cap 16000000)")
    return 0
