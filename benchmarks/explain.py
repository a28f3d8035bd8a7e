"""Explanation methods on cost and on what they recover: seconds per case and deletion-curve
faithfulness, on the phantom cohort (true effects known) and on NIH ChestX-ray14 (800).

Deletion curve: the explained case's prediction as the top-attributed units (modalities, tabular
columns, image patches) are removed in attribution order (modalities masked, columns set to their
baseline, patches set to the image mean); reported as the area under that curve normalised by the
full prediction (lower = the method found what the prediction rests on), next to a random order.
Truth (phantom): the rank of the null lab SODIUM by |attribution| (9 = last of 9 is right), and for
images whether the saliency peak falls within 2 radii of the drawn opacity (hit rate).

    .venv/bin/python benchmarks/explain.py [--cases 12] [--nih]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medweave.explain import ModelContext, leave_one_out, modality_shapley, tabular_attributions
from medweave.explain.features import IMAGE_METHODS, feature_groups, image_saliency, replace_forward
from medweave.explain.modalities import ordered_removal_curve


def deletion_auc(curve: np.ndarray) -> float:
    """Area under a removal curve (trapezoid over equally spaced steps), relative to its start."""
    return float(np.trapezoid(curve, dx=1 / (len(curve) - 1)) / max(curve[0], 1e-9))


def modality_rows(ctx, idx, rng) -> list[tuple]:
    x, mask, _ = ctx.dataset.tensors(idx)
    rows = []
    for name, fn in (("modality Shapley (exact)", lambda: modality_shapley(ctx, x, mask)["values"]),
                     ("modality leave-one-out", lambda: leave_one_out(ctx, x, mask)),
                     ("modality random order", lambda: rng.random(mask.shape))):
        t0 = time.perf_counter()
        attr = fn()
        sec = (time.perf_counter() - t0) / len(idx)
        curves = ordered_removal_curve(ctx, x, mask, np.argsort(-attr, axis=1))
        rows.append((name, sec, np.mean([deletion_auc(c) for c in curves]), ""))
    return rows


def tabular_rows(ctx, idx, null: str | None) -> list[tuple]:
    names, fmask = feature_groups(ctx)
    rows = []
    for method in ("integrated_gradients", "shapley_sampling", "feature_ablation"):
        secs, aucs, ranks = [], [], []
        for i in idx:
            cid = ctx.dataset.case_ids[i]
            t0 = time.perf_counter()
            attr = tabular_attributions(ctx, cid, methods=(method,)).get(method)
            secs.append(time.perf_counter() - t0)
            if not attr:
                continue
            x, mask = ctx.case_tensors(cid)
            f = replace_forward(ctx, x, mask, "table")
            xt = torch.nan_to_num(x["table"]).clone()
            with torch.no_grad():
                curve = [float(f(xt))]
                for name in sorted(attr, key=lambda n: -attr[n]):
                    xt[0, fmask[0] == names.index(name)] = 0
                    curve.append(float(f(xt)))
            aucs.append(deletion_auc(np.array(curve)))
            if null:
                ranks.append(1 + sorted(attr, key=lambda n: -abs(attr[n])).index(null))
        truth = f"{null} rank {np.mean(ranks):.1f}/{len(names)}" if ranks else ""
        rows.append((f"tabular {method.replace('_', ' ')}", np.mean(secs), np.mean(aucs), truth))
    return rows


def patch_deletion(ctx, cid, smap, forward_input, steps=5, patch=32) -> float:
    """Remove the top patches (by summed saliency) in 5 steps of 10 % of the image each."""
    from medweave.explain.features import image_forward

    x0, others, k = forward_input
    f = image_forward(ctx, cid, others, k)
    n = 224 // patch
    score = smap[:n * patch, :n * patch].reshape(n, patch, n, patch).sum((1, 3)).ravel()
    order = np.argsort(-score)
    img = x0.clone()
    with torch.no_grad():
        curve = [float(f(img))]
        per = max(1, len(order) // 10)
        for s in range(steps):
            for p in order[s * per:(s + 1) * per]:
                r, c = divmod(int(p), n)
                img[:, :, r * patch:(r + 1) * patch, c * patch:(c + 1) * patch] = float(x0.mean())
            curve.append(float(f(img)))
    return deletion_auc(np.array(curve))


def image_rows(ctx, idx, truth: dict | None) -> list[tuple]:
    rows = []
    for method in IMAGE_METHODS:
        secs, aucs, hits = [], [], []
        for i in idx:
            cid = ctx.dataset.case_ids[i]
            t0 = time.perf_counter()
            sal = image_saliency(ctx, cid, methods=(method,))
            secs.append(time.perf_counter() - t0)
            if not sal:
                continue
            n_img = len(ctx.items_of(cid, "image"))
            if n_img != 1:
                continue
            smap = sal["maps"][method]
            x0 = torch.from_numpy(sal["input"][None])
            aucs.append(patch_deletion(ctx, cid, smap, (x0, np.zeros(1280, np.float32), 1)))
            geo = (truth or {}).get(sal["item_id"])
            if geo:
                from scipy.ndimage import uniform_filter

                peak = np.unravel_index(np.argmax(uniform_filter(np.clip(smap, 0, None), 15)), smap.shape)
                scale = 224 / 128
                cx, cy = geo["center_xy_px"][0] * scale, geo["center_xy_px"][1] * scale
                hits.append(np.hypot(peak[1] - cx, peak[0] - cy) <= 2 * geo["radius_px"] * scale)
        truth_s = f"peak on opacity {np.mean(hits):.0%} (n={len(hits)})" if hits else ""
        rows.append((f"image {method.replace('_', ' ')}", np.mean(secs), np.mean(aucs) if aucs else float("nan"), truth_s))
    return rows


def phantom_truth(ctx) -> dict:
    """Image item id -> the drawn finding's geometry (from the manifest, matched by source file name)."""
    from medweave.demo.phantom import PhantomManifest

    manifest = PhantomManifest.load(Path(ctx.store_dir).parent / "phantom")
    findings = {f"{p.patient_id}_{s.study}": s.finding for p in manifest.patients for s in p.studies if s.finding}
    with ctx.open_store() as st:
        rows = st.con.execute("SELECT item_id, source_path FROM items WHERE modality = 'image'").fetchall()
    return {iid: findings[Path(src).stem] for iid, src in rows if Path(src).stem in findings}


def print_table(title: str, rows: list[tuple]) -> None:
    print(f"\n{title}")
    print(f"{'method':34s} {'s/case':>8s} {'deletion AUC':>13s}  truth")
    for name, sec, auc, truth in rows:
        print(f"{name:34s} {sec:8.3f} {auc:13.3f}  {truth}")


def run(ctx, title: str, n: int, null: str | None, truth: dict | None) -> None:
    rng = np.random.default_rng(0)
    p = ctx.score(*ctx.dataset.tensors()[:2]).detach().numpy()
    test = np.flatnonzero(ctx.cohort.table["split"].to_numpy() != "train")
    idx = test[np.argsort(-p[test])][:n]  # the most positive predictions: what deletion can lower
    if truth:  # cases with a drawn opacity first
        with_finding = [i for i in idx if any(it in truth for it in ctx.items_of(ctx.dataset.case_ids[i], "image"))]
        idx = np.array(with_finding + [i for i in idx if i not in with_finding])[:n]
    rows = modality_rows(ctx, idx, rng)
    if "table" in ctx.modalities:
        rows += tabular_rows(ctx, idx, null)
    rows += image_rows(ctx, idx, truth)
    print_table(f"{title}: {len(idx)} cases with the highest predictions (valid+test)", rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=12)
    ap.add_argument("--phantom-model", type=Path)
    ap.add_argument("--nih", action="store_true", help="also train (cached) and explain the NIH model")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "mw-explain-bench")
    args = ap.parse_args()
    from medweave.report.demo import small_phantom_model

    # Without the reports: they restate the label, which saturates the prediction at ~1 and leaves
    # nothing for the tabular and image attributions to show.
    model = args.phantom_model or small_phantom_model(args.work / "phantom-no-reports", n_patients=200, epochs=30,
                                                      modalities=["table", "image", "signal"])
    ctx = ModelContext.load(model)
    run(ctx, "phantom (synthetic)", args.cases, "SODIUM", phantom_truth(ctx))
    if args.nih:
        from medweave.config import load_config
        from medweave.train.pipeline import train_experiment

        nih = args.work / "nih"
        if not (nih / "config.json").exists():
            train_experiment(load_config(Path(__file__).parents[1] / "configs" / "nih-cxr14.toml"), nih, progress=False)
        run(ModelContext.load(nih), "NIH ChestX-ray14 (800)", args.cases, None, None)


if __name__ == "__main__":
    main()
