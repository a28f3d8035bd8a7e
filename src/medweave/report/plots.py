"""Report figures as PNG bytes (matplotlib, Agg backend): small, labelled, one function each. Each is
drawn under the process's figure lock (``medweave.figures``): the server draws them in request threads."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..figures import subplots, to_png


def presence_map(mask: np.ndarray, modalities: Sequence[str], splits: Sequence[str]) -> bytes:
    """Cases (rows, grouped by split, then by presence pattern) x modalities; dark = present."""
    splits = np.asarray(splits)
    pattern = (mask.astype(int) * (2 ** np.arange(mask.shape[1]))).sum(1)
    order = np.lexsort((-pattern, splits))
    with subplots(figsize=(1.2 + 0.9 * len(modalities), 4.2)) as (fig, ax):
        ax.imshow(mask[order].astype(float), aspect="auto", cmap="Blues", vmin=0, vmax=1.2, interpolation="nearest")
        ax.set_xticks(range(len(modalities)), modalities)
        ax.set_ylabel(f"{len(mask)} cases (grouped by split)")
        bounds = np.flatnonzero(np.r_[True, splits[order][1:] != splits[order][:-1]])
        for b in bounds:
            ax.axhline(b - 0.5, color="crimson", lw=0.8)
            ax.text(len(modalities) - 0.45, b + 2, str(splits[order][b]), color="crimson", fontsize=8, va="top")
        ax.set_title("presence map (blue = present, white = absent)", fontsize=9)
        return to_png(fig, dpi=100)


def roc_plot(y: np.ndarray, p: np.ndarray, title: str) -> bytes:
    """ROC curve with the chance diagonal."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, p)
    with subplots(figsize=(3.6, 3.4)) as (fig, ax):
        ax.plot(fpr, tpr, color="navy")
        ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=0.8)
        ax.set_xlabel("1 - specificity")
        ax.set_ylabel("sensitivity")
        ax.set_title(title, fontsize=9)
        return to_png(fig, dpi=100)


def calibration_plot(y: np.ndarray, p: np.ndarray, title: str, bins: int = 10) -> bytes:
    """Reliability diagram: mean label per equal-width probability bin (marker size = cases)."""
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    xs, ys, ns = [], [], []
    for b in range(bins):
        sel = idx == b
        if sel.any():
            xs.append(p[sel].mean())
            ys.append(y[sel].mean())
            ns.append(sel.sum())
    with subplots(figsize=(3.6, 3.4)) as (fig, ax):
        ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=0.8)
        ax.plot(xs, ys, color="darkgreen")
        ax.scatter(xs, ys, s=[10 + 4 * n for n in ns], color="darkgreen", alpha=0.6)
        ax.set_xlabel("predicted probability")
        ax.set_ylabel("observed frequency")
        ax.set_title(title, fontsize=9)
        return to_png(fig, dpi=100)


def bar_plot(values: Mapping[str, float], title: str, xlabel: str) -> bytes:
    """Horizontal signed bars (red raises the prediction, blue lowers it)."""
    names = list(values)
    vals = np.array([values[n] for n in names], dtype=float)
    with subplots(figsize=(4.2, 0.45 * len(names) + 0.9)) as (fig, ax):
        ax.barh(range(len(names)), vals, color=["firebrick" if v > 0 else "steelblue" for v in vals])
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        ax.axvline(0, color="black", lw=0.6)
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize=9)
        return to_png(fig, dpi=100)


def step_plot(steps: Sequence[Mapping], title: str) -> bytes:
    """The sequential model's prediction before any modality and after each step (hollow = skipped)."""
    with subplots(figsize=(4.2, 2.6)) as (fig, ax):
        probs = [s["prob"] for s in steps]
        ax.plot(range(len(steps)), probs, color="gray", lw=0.8)
        for i, s in enumerate(steps):
            filled = s["updated"] or i == 0
            ax.scatter([i], [s["prob"]], color="purple" if filled else "white", edgecolor="purple", zorder=3)
        ax.set_xticks(range(len(steps)), [s["step"] + ("" if s["updated"] or i == 0 else "\n(absent)")
                                          for i, s in enumerate(steps)], fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("probability")
        ax.set_title(title, fontsize=9)
        return to_png(fig, dpi=100)


def signal_plot(data: np.ndarray, rate: float, names: Sequence[str] = (), seconds: float = 5.0) -> bytes:
    """The first seconds of every lead of a signal, stacked."""
    n = min(len(data), 12)
    keep = int(seconds * rate) if rate > 0 else data.shape[1]
    t = np.arange(min(keep, data.shape[1])) / (rate or 1.0)
    with subplots(n, 1, figsize=(6.5, 0.9 * n + 0.4), sharex=True, squeeze=False) as (fig, axes):
        for i in range(n):
            axes[i, 0].plot(t, data[i, :len(t)], lw=0.7, color="black")
            axes[i, 0].set_ylabel(names[i] if i < len(names) else f"lead {i + 1}", fontsize=8)
        axes[-1, 0].set_xlabel("seconds" if rate > 0 else "samples")
        return to_png(fig, dpi=100)
