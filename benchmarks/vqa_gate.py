"""The picture gate (``medweave.vqa.gate``) on its own: how often it abstains on real held-out pictures
(false abstentions) and on pictures with no readable content, with no answerer trained. The gate is a
function of the training pictures alone, so calibrating it on a split's training-side pictures (the
very function ``Answerer.fit`` calls) gives what a model trained on that side would do.

    .venv/bin/python benchmarks/vqa_gate.py [--datasets vqa-rad,pathvqa,phantom] [--seeds 0,1,2] [--cache DIR]

- VQA-RAD: the test-like split (held-out questions about training pictures) and the images split
  (held-out pictures), both views (the default answerer);
- PathVQA: the images split (its test's case), the 224 view (its configuration, ``--views 1``);
- the phantom demo: its 160 pictures split as ``medweave demo`` splits them (25% of the pictures), both views;
- probes: blank, constant grey, uniform noise (the probes' pictures), and kinds the gate was not designed
  on: Gaussian noise, coarse noise blocks, a smooth gradient, a checkerboard; and pictures of the other
  data set (VQA-RAD against PathVQA, 224 view).

Prints tables; not a timed test. Needs the shared data (``$MEDWEAVE_DATA`` or ../shared/data).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from medweave.evaluate.vqa import blank_image, noise_image
from medweave.settings import shared_data_dir
from medweave.vqa.data import load_vqa
from medweave.vqa.features import IMAGE_ENCODERS, embed_image_arrays, embed_image_files, open_cache
from medweave.vqa.gate import calibrate, unreadable
from medweave.vqa.splits import make_split, split_by_images

console = Console(width=160)


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def probe_pictures() -> dict[str, list[np.ndarray]]:
    """Pictures with no readable content: the probes' own, and kinds the gate was not designed on."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:256, 0:256]
    return {
        "blank": [blank_image()],
        "constant grey 128": [np.full((256, 256), 128, np.uint8)],
        "uniform noise (the probe's)": [noise_image(i) for i in range(20)],
        "gaussian noise": [np.clip(rng.normal(128, 40, (256, 256)), 0, 255).astype(np.uint8) for _ in range(10)],
        "coarse noise (8x8 blocks)": [np.kron(rng.integers(0, 256, (32, 32)), np.ones((8, 8))).astype(np.uint8)
                                      for _ in range(10)],
        "gradient": [(xx * 255 / 255).astype(np.uint8)],
        "checkerboard": [(((yy // 32 + xx // 32) % 2) * 255).astype(np.uint8)],
    }


def gate_rows(name: str, train: tuple, held: tuple, probes: dict[str, tuple],
              other: dict[str, tuple]) -> list[list[str]]:
    """One table row for the held-out real pictures and one per probe kind, of a gate calibrated on
    ``train``; each argument is (embeddings, pixel statistics). Abstentions by the embedding signal
    alone and with the pixel statistics."""
    gate = calibrate(_l2(train[0]), train[1])
    t = _l2(train[0]).T
    rows = []

    def row(label, emb, st):
        near = (_l2(emb) @ t).max(1)
        alone, both = unreadable(near, gate), unreadable(near, gate, st)
        rows.append([name if not rows else "", f"{gate['threshold']:.3f}" if not rows else "", label, str(len(emb)),
                     f"{alone.mean():.3f} ({int(alone.sum())})", f"{both.mean():.3f} ({int(both.sum())})",
                     f"{near.min():.3f} / {np.median(near):.3f} / {near.max():.3f}",
                     f"{st[:, 0].min():.1f} / {st[:, 1].min():.3f}"])

    if len(held[0]):
        row("held-out real pictures (false abstentions)", *held)
    else:
        rows.append([name, f"{gate['threshold']:.3f}", "held-out real pictures: all are training pictures "
                     "(nearest cosine 1.000)", "0", "0.000 (0)", "0.000 (0)", "-", "-"])
    for label, (emb, st) in {**probes, **other}.items():
        row(label, emb, st)
    px = gate["pixel"]
    console.print(f"{name}: {gate['pictures']} training pictures; pair median {gate['pair_median']:.3f}, "
                  f"nearest other min {gate['loo_min']:.3f} / median {gate['loo_median']:.3f} -> floor "
                  f"{gate['loo_floor']:.3f}; threshold {gate['threshold']:.3f}; pixel sd min {px['sd_min']:.1f} -> "
                  f"{px['sd_threshold']:.1f}, neighbour correlation min {px['corr_min']:.3f} -> "
                  f"{px['corr_threshold']:.3f}", highlight=False)
    return rows


def table(rows: list[list[str]]) -> None:
    t = Table(title="picture gate: share of pictures abstained on (calibrated on each split's training pictures)")
    for c in ("split", "threshold", "pictures", "n", "abstained: embedding alone", "abstained: + pixel statistics",
              "nearest training cosine min / median / max", "pixel sd / neighbour correlation min"):
        t.add_column(c)
    for r in rows:
        t.add_row(*r)
    console.print(t)


def vqa_pictures(data: Path, cache, views: int) -> tuple[list[str], np.ndarray, object]:
    vqa = load_vqa(data)
    names = vqa.image_names()
    t0 = time.perf_counter()
    emb = embed_image_files([vqa.image_path(n) for n in names], cache, IMAGE_ENCODERS[:views], with_stats=True)
    console.print(f"{data.name}: {len(names)} pictures, {views} view(s), {time.perf_counter() - t0:.0f} s "
                  "(0 when cached)", highlight=False)
    return names, emb, vqa


def split_pictures(vqa, names: list[str], kind: str, seed: int) -> tuple[list[int], list[int]]:
    """(training-side picture rows, held-out picture rows not on the training side) of a split."""
    tr, he = make_split(kind, vqa.questions, 0.15, seed)
    train = {vqa.questions[i].image for i in tr}
    held = {vqa.questions[i].image for i in he} - train
    return [i for i, n in enumerate(names) if n in train], [i for i, n in enumerate(names) if n in held]


def phantom_pictures(work: Path, cache) -> tuple[list[str], np.ndarray]:
    """The demo's phantom pictures (the first 160 by name, windowed to 8 bit as the demo writes them)."""
    import pydicom

    from medweave.demo.phantom import generate_phantom
    from medweave.encode.image import window_to_uint8
    from medweave.vqa.demo import MAX_PHANTOM_IMAGES

    generate_phantom(work / "phantom", 300, seed=0)
    files = sorted((work / "phantom" / "data" / "images").glob("*.dcm"), key=lambda p: p.stem)[:MAX_PHANTOM_IMAGES]
    arrays = [window_to_uint8(pydicom.dcmread(f).pixel_array) for f in files]
    return [f"{f.stem}.png" for f in files], embed_image_arrays(arrays, cache, IMAGE_ENCODERS, with_stats=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="vqa-rad,pathvqa,phantom")
    ap.add_argument("--seeds", default="0,1,2", help="split seeds of the images splits")
    ap.add_argument("--cache", type=Path, help="folder of the embedding caches (default: a new temporary one)")
    args = ap.parse_args()
    which = [d.strip() for d in args.datasets.split(",") if d.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    work = Path(tempfile.mkdtemp(prefix="vqa-gate-"))
    cache_dir = args.cache or work
    cache_dir.mkdir(parents=True, exist_ok=True)
    raw = probe_pictures()
    rows: list[list[str]] = []
    pics: dict[str, tuple] = {}
    for name in ("vqa-rad", "pathvqa"):
        data = shared_data_dir() / name
        if name in which and (data / "trainset.json").is_file():
            with open_cache(cache_dir / f"{name}.duckdb") as cache:
                pics[name] = vqa_pictures(data, cache, 2 if name == "vqa-rad" else 1)
    with open_cache(cache_dir / "probes.duckdb") as cache:
        probes = {v: {k: embed_image_arrays(a, cache, IMAGE_ENCODERS[:v], with_stats=True) for k, a in raw.items()}
                  for v in (1, 2)}
    width = 1280  # the 224 view, the first block of columns

    def rows_of(pair, idx, cols=None):
        emb, st = pair
        return (emb[idx] if cols is None else emb[idx][:, :cols]), st[idx]

    if "vqa-rad" in pics:
        names, both, vqa = pics["vqa-rad"]
        other = {}
        if "pathvqa" in pics:
            other = {"PathVQA pictures (224 view only)": pics["pathvqa"][1]}
        tr, he = split_pictures(vqa, names, "testlike", 0)
        rows += gate_rows("VQA-RAD testlike seed 0", rows_of(both, tr), rows_of(both, he), probes[2], {})
        for s in seeds:
            tr, he = split_pictures(vqa, names, "images", s)
            rows += gate_rows(f"VQA-RAD images seed {s}", rows_of(both, tr), rows_of(both, he), probes[2], {})
        if other:
            tr, he = split_pictures(vqa, names, "images", seeds[0])
            rows += gate_rows(f"VQA-RAD images seed {seeds[0]}, 224 view", rows_of(both, tr, width),
                              rows_of(both, he, width), probes[1], other)
    if "pathvqa" in pics:
        names, both, vqa = pics["pathvqa"]
        other = {}
        if "vqa-rad" in pics:
            rad = pics["vqa-rad"][1]
            other = {"VQA-RAD pictures": (rad[0][:, :width], rad[1])}
        for i, s in enumerate(seeds):
            tr, he = split_pictures(vqa, names, "images", s)
            rows += gate_rows(f"PathVQA images seed {s}", rows_of(both, tr), rows_of(both, he), probes[1],
                              other if i == 0 else {})
    if "phantom" in which:
        with open_cache(cache_dir / "phantom.duckdb") as cache:
            names, both = phantom_pictures(work, cache)
        tr, he = split_by_images(names, 0.25, seed=0)
        rows += gate_rows("phantom demo (25% of pictures held out)", rows_of(both, tr), rows_of(both, he),
                          probes[2], {})
    table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
