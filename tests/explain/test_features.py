"""Per-feature attributions: tabular (Captum), image saliency, words by occlusion."""

import numpy as np
import torch

from medweave.explain import explain, tabular_attributions, word_occlusion
from medweave.explain.features import feature_groups, replace_forward


def test_feature_ablation_equals_the_drop_of_zeroing_the_group(ctx):
    case = next(c for i, c in enumerate(ctx.dataset.case_ids) if ctx.dataset.mask[i, ctx.modalities.index("table")])
    attr = tabular_attributions(ctx, case, methods=("feature_ablation", "integrated_gradients"))
    names, fmask = feature_groups(ctx)
    assert "SODIUM" in attr["feature_ablation"] and "age" in attr["feature_ablation"]
    x, mask = ctx.case_tensors(case)
    f = replace_forward(ctx, x, mask, "table")
    xt = torch.nan_to_num(x["table"])
    g = names.index("WBC")
    ablated = xt.clone()
    ablated[0, fmask[0] == g] = 0
    with torch.no_grad():
        expected = float(f(xt) - f(ablated))
    assert abs(attr["feature_ablation"]["WBC"] - expected) < 1e-6
    # integrated gradients is complete: its attributions sum to f(x) - f(baseline)
    with torch.no_grad():
        total = float(f(xt) - f(torch.zeros_like(xt)))
    assert abs(sum(attr["integrated_gradients"].values()) - total) < 0.15 * abs(total) + 2e-3


def test_word_occlusion_scores_each_word_by_its_removal():
    def score(texts):
        return np.array([t.split().count("opacity") * 0.25 for t in texts])

    out = word_occlusion("a round opacity in the opacity zone", score)
    assert out["prediction"] == 0.5
    by_word = [(w["word"], w["attribution"]) for w in out["words"]]
    assert by_word[2] == ("opacity", 0.25) and by_word[0] == ("a", 0.0)


def test_full_explanation_of_a_case_with_image_and_text(ctx):
    i = next(i for i in range(len(ctx.dataset)) if ctx.dataset.mask[i].all())
    e = explain(ctx, ctx.dataset.case_ids[i])
    assert set(e["image"]["overlays"]) == {"integrated_gradients", "occlusion"}
    assert e["image"]["overlays"]["occlusion"].startswith("iVBOR")  # base64 PNG
    assert e["text"]["words"] and all(np.isfinite(w["attribution"]) for w in e["text"]["words"])
    assert set(e["tabular"]) == {"integrated_gradients", "shapley_sampling", "feature_ablation"}
    assert abs(sum(e["shapley"].values()) - (e["prediction"] - e["all_absent"])) < 1e-6
