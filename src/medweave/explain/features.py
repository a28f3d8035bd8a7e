"""Per-feature attributions inside one modality, each into the fused prediction.

* ``tabular_attributions`` — Captum's integrated gradients, Shapley value sampling and feature
  ablation on the tabular input, with one feature group per source column (a number and its missing
  indicator, or all one-hot columns of a category: ``TabularFeaturizer.groups()``). Baseline: all
  features 0, i.e. every number at its training mean and no category or missing flag set.
* ``image_saliency`` — integrated gradients (baseline: a black image) and occlusion (32 px patches
  set to the image's mean) through the EfficientNet-Lite0 encoder, its pooling, the case's mean over
  images and the fusion model: a (224, 224) map per method, drawn over the image as a PNG.
* ``word_occlusion`` — each word of a text removed in turn and the text re-encoded; the drop of the
  prediction is that word's attribution (for reports here, and for questions given a scoring function).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from .context import ModelContext

TABULAR_METHODS = ("integrated_gradients", "shapley_sampling", "feature_ablation")
IMAGE_METHODS = ("integrated_gradients", "occlusion")


def replace_forward(ctx: ModelContext, inputs: dict[str, torch.Tensor], mask: torch.Tensor,
                    modality: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """f(x) = score of the case with ``modality``'s input replaced by each row of x (others fixed)."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        big = {k: (x if k == modality else v.expand(n, -1)) for k, v in inputs.items()}
        return ctx.score(big, mask.expand(n, -1))
    return forward


# --- tabular ----------------------------------------------------------------------------------------

def feature_groups(ctx: ModelContext) -> tuple[list[str], torch.Tensor]:
    """Group names (source columns) and a (1, d) Captum feature mask of group indices."""
    groups = ctx.featurizer.groups()
    fmask = torch.zeros(1, ctx.featurizer.dim, dtype=torch.long)
    for g, idx in enumerate(groups.values()):
        fmask[0, idx] = g
    return [n.removeprefix("table:") for n in groups], fmask


def _captum_attr():
    """``captum.attr``, imported under the figure lock after pyplot (captum imports pyplot itself, and
    the server explains in request threads while others draw figures: ``medweave.figures``)."""
    from ..figures import import_after_pyplot

    return import_after_pyplot("captum.attr")


def tabular_attributions(ctx: ModelContext, case_id: str, methods: Sequence[str] = TABULAR_METHODS,
                         n_samples: int = 25) -> dict[str, dict[str, float]]:
    """Attribution of each tabular source column, per method; {} when the case has no tabular data."""
    attr = _captum_attr()
    FeatureAblation, IntegratedGradients, ShapleyValueSampling = \
        attr.FeatureAblation, attr.IntegratedGradients, attr.ShapleyValueSampling

    if "table" not in ctx.modalities or ctx.featurizer is None:
        return {}
    x, mask = ctx.case_tensors(case_id)
    if not bool(mask[0, ctx.modalities.index("table")]):
        return {}
    forward = replace_forward(ctx, x, mask, "table")
    names, fmask = feature_groups(ctx)
    xt = torch.nan_to_num(x["table"])
    base = torch.zeros_like(xt)
    out: dict[str, dict[str, float]] = {}
    for method in methods:
        if method == "integrated_gradients":
            attr = IntegratedGradients(forward).attribute(xt, baselines=base, n_steps=64)
        elif method == "shapley_sampling":
            attr = ShapleyValueSampling(forward).attribute(xt, baselines=base, feature_mask=fmask,
                                                           n_samples=n_samples, perturbations_per_eval=64)
        elif method == "feature_ablation":
            attr = FeatureAblation(forward).attribute(xt, baselines=base, feature_mask=fmask,
                                                      perturbations_per_eval=64)
        else:
            raise ValueError(f"unknown tabular method {method!r}; allowed values: {', '.join(TABULAR_METHODS)}")
        a = attr.detach()[0]
        per_group = torch.zeros(len(names), dtype=a.dtype).index_add_(0, fmask[0], a)
        if method != "integrated_gradients":  # ablation-type methods repeat the group value per feature
            per_group = per_group / torch.bincount(fmask[0], minlength=len(names)).clamp(min=1)
        out[method] = {n: float(v) for n, v in zip(names, per_group)}
    return out


# --- image ------------------------------------------------------------------------------------------

def load_item_contents(ctx: ModelContext, item_ids: Sequence[str]) -> list[Any]:
    """Loaded contents of items (arrays, texts) in the given order."""
    from ..encode.loaders import load_item

    if not item_ids:
        return []
    with ctx.open_store() as store:
        rows = store.con.execute("SELECT * EXCLUDE (labels, meta) FROM items WHERE item_id IN (SELECT unnest(?))",
                                 [list(item_ids)]).df().to_dict("records")
        by_id = {r["item_id"]: r for r in rows}
        return [load_item(store.root, by_id[i]) for i in item_ids if i in by_id]


def image_forward(ctx: ModelContext, case_id: str, others: np.ndarray, k: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """f(pixels) for the case's first image: encoder -> pooled features -> mean with its other images -> model."""
    from ..encode.image import load_backbone

    backbone = load_backbone()
    x, mask = ctx.case_tensors(case_id)
    fused = replace_forward(ctx, x, mask, "image")
    rest = torch.from_numpy(others.astype(np.float32))

    def forward(pixels: torch.Tensor) -> torch.Tensor:
        feats = backbone.extract_features(pixels).mean(dim=(2, 3))
        return fused((feats + rest) / k)
    return forward


def image_saliency(ctx: ModelContext, case_id: str, methods: Sequence[str] = IMAGE_METHODS,
                   ig_steps: int = 16, window: int = 32, stride: int = 32) -> dict[str, Any]:
    """Saliency maps (224 x 224, float) of the case's first image per method, with the model input."""
    from ..encode.image import features, to_input

    attr = _captum_attr()
    IntegratedGradients, Occlusion = attr.IntegratedGradients, attr.Occlusion

    if "image" not in ctx.modalities or not bool(ctx.case_tensors(case_id)[1][0, ctx.modalities.index("image")]):
        return {}
    arrays = load_item_contents(ctx, ctx.items_of(case_id, "image"))
    if not arrays:
        return {}
    inputs = np.stack([to_input(a) for a in arrays])
    others = features(inputs[1:]).sum(0) if len(arrays) > 1 else np.zeros(1280, np.float32)
    forward = image_forward(ctx, case_id, others, len(arrays))
    x0 = torch.from_numpy(inputs[:1])
    maps: dict[str, np.ndarray] = {}
    for method in methods:
        if method == "integrated_gradients":
            attr = IntegratedGradients(forward).attribute(x0, baselines=-1.0, n_steps=ig_steps, internal_batch_size=8)
            maps[method] = attr.detach()[0].sum(0).abs().numpy()
        elif method == "occlusion":
            attr = Occlusion(forward).attribute(x0, sliding_window_shapes=(3, window, window),
                                                strides=(3, stride, stride), baselines=float(x0.mean()),
                                                perturbations_per_eval=16)
            maps[method] = attr.detach()[0, 0].numpy()
        else:
            raise ValueError(f"unknown image method {method!r}; allowed values: {', '.join(IMAGE_METHODS)}")
    return {"maps": maps, "input": inputs[0], "item_id": ctx.items_of(case_id, "image")[0]}


def overlay_png(model_input: np.ndarray, saliency: np.ndarray | None, title: str = "") -> bytes:
    """The image (a (3, 224, 224) model input) in gray with the saliency's positive part over it, as PNG.
    Drawn under the process's figure lock (``medweave.figures``): the server draws overlays in request
    threads."""
    from ..figures import subplots, to_png

    with subplots(figsize=(3.2, 3.2), dpi=100) as (fig, ax):
        ax.imshow((model_input[0] + 1) / 2, cmap="gray", vmin=0, vmax=1)
        if saliency is not None:
            s = np.clip(saliency, 0, None)
            top = np.percentile(s, 99.5) or 1.0
            heat = np.ma.masked_less(np.clip(s / top, 0, 1), 0.2)  # weak attributions stay see-through
            ax.imshow(heat, cmap="inferno", alpha=0.55, vmin=0, vmax=1)
        ax.set_axis_off()
        if title:
            ax.set_title(title, fontsize=9)
        return to_png(fig)


# --- text -------------------------------------------------------------------------------------------

def word_occlusion(text: str, score_texts: Callable[[list[str]], np.ndarray], max_words: int = 150) -> dict[str, Any]:
    """Attribution of each word: score(text) - score(text without that word). ``score_texts`` maps a
    list of texts to their scores (one batch). Words beyond ``max_words`` are not scored."""
    words = text.split()
    shown = words[:max_words]
    variants = [" ".join(words[:i] + words[i + 1:]) for i in range(len(shown))]
    scores = np.asarray(score_texts([text, *variants]), dtype=np.float64)
    return {"prediction": float(scores[0]),
            "words": [{"word": w, "attribution": float(scores[0] - s)} for w, s in zip(shown, scores[1:])]}


def text_attributions(ctx: ModelContext, case_id: str, max_words: int = 150) -> dict[str, Any]:
    """Word occlusion on the case's first report, re-encoded with the model's text encoder."""
    from ..encode import get_encoder

    if "text" not in ctx.modalities:
        return {}
    x, mask = ctx.case_tensors(case_id)
    if not bool(mask[0, ctx.modalities.index("text")]):
        return {}
    texts = [str(t) for t in load_item_contents(ctx, ctx.items_of(case_id, "text"))]
    if not texts:
        return {}
    encoder = get_encoder(ctx.config.get("encoders", {}).get("text", {}).get("name", "e5-small"))
    others = encoder.encode(texts[1:]).sum(0) if len(texts) > 1 else 0.0
    forward = replace_forward(ctx, x, mask, "text")

    def score_texts(batch: list[str]) -> np.ndarray:
        emb = (encoder.encode(batch) + others) / len(texts)
        with torch.no_grad():
            return forward(torch.from_numpy(emb.astype(np.float32))).numpy()

    return {"item_id": ctx.items_of(case_id, "text")[0], **word_occlusion(texts[0], score_texts, max_words)}
