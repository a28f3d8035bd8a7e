"""What the benchmarks that choose a setting on inner splits of the training side share
(vqa_tune.py, vqa_prior.py, vqa_words.py): their common options, the split seeds, the VQA-RAD set they
read and the embedding cache they use. The inner split itself is ``medweave.vqa.splits.inner_split``."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def add_inner_options(ap: argparse.ArgumentParser, json_help: str) -> None:
    """--data, --split-seeds, --members, --views, --cache and --json."""
    ap.add_argument("--data", type=Path, default=None, help="VQA-RAD folder (default: the shared one)")
    ap.add_argument("--split-seeds", default="0,1,2")
    ap.add_argument("--members", type=int, default=1, help="ensemble members of the inner answerer")
    ap.add_argument("--views", type=int, default=1, help="picture views of the inner answerer")
    ap.add_argument("--cache", type=Path, help="embedding cache to reuse")
    ap.add_argument("--json", type=Path, help=json_help)


def split_seeds(args: argparse.Namespace) -> list[int]:
    try:
        return [int(s) for s in args.split_seeds.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--split-seeds is {args.split_seeds!r}; expected integers separated by commas, "
                         "e.g. 0,1,2") from None


def load_inner_set(args: argparse.Namespace):
    """The VQA-RAD training file of --data (default: the shared one), or None after saying why."""
    from medweave.settings import shared_data_dir
    from medweave.vqa.data import load_vqa

    data = args.data or shared_data_dir() / "vqa-rad"
    if not (data / "trainset.json").is_file():
        print(f"VQA-RAD not found at {data} (set MEDWEAVE_DATA); nothing to choose")
        return None
    return load_vqa(data)


def cache_path(args: argparse.Namespace, prefix: str) -> Path:
    """--cache, or a fresh cache file in a new temporary folder."""
    from medweave.vqa.pipeline import CACHE_NAME

    return args.cache or Path(tempfile.mkdtemp(prefix=prefix)) / CACHE_NAME
