"""Fusion models: per-sample skipping, batch independence, step semantics, modality dropout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medweave.fuse import FUSERS, HeadSpec, SequentialFusion, modality_dropout

DIMS = {"table": 6, "image": 20, "text": 12}
HEADS = [HeadSpec("y", "binary"), HeadSpec("kind", "multiclass", 3), HeadSpec("tags", "multilabel", 4),
         HeadSpec("score", "regression")]


def make(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    model = FUSERS.get(kind)(DIMS, HEADS, hidden=16, dropout=0.0)
    # Random, non-trivial weights everywhere (fresh heads start near zero otherwise).
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


def batch(n: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = {m: torch.randn(n, d, generator=g) for m, d in DIMS.items()}
    return x, torch.ones(n, len(DIMS), dtype=torch.bool)


@pytest.mark.parametrize("kind", ["sequential", "concat", "attention", "stacked"])
def test_prediction_does_not_depend_on_other_samples_missingness(kind):
    model = make(kind)
    x, mask = batch()
    before = model(x, mask)["logits"]
    mask2 = mask.clone()
    mask2[3, 1] = False  # sample 3 loses its image ...
    x2 = {m: v.clone() for m, v in x.items()}
    x2["image"][3] = float("nan")  # ... and what is there is garbage, never read
    after = model(x2, mask2)["logits"]
    others = [i for i in range(8) if i != 3]
    for name in before:
        assert torch.allclose(before[name][others], after[name][others], atol=1e-6), name
        assert not torch.isnan(after[name]).any()
    assert not torch.allclose(before["y"][3], after["y"][3]), "the sample that lost a modality must change"


@pytest.mark.parametrize("kind", ["sequential", "concat", "attention", "stacked"])
def test_absent_rows_are_never_read(kind):
    model = make(kind)
    x, mask = batch()
    mask[:, 2] = False
    x_nan = {m: v.clone() for m, v in x.items()}
    x_nan["text"][:] = float("nan")
    x_big = {m: v.clone() for m, v in x.items()}
    x_big["text"][:] = 1e6
    a, b = model(x_nan, mask)["logits"]["y"], model(x_big, mask)["logits"]["y"]
    assert torch.allclose(a, b) and not torch.isnan(a).any()


def test_sequential_absent_modality_equals_the_sequence_without_that_step():
    model = make("sequential")
    x, mask = batch()
    mask[:, 1] = False  # image absent for everyone
    skipped = model(x, mask)
    without = model(x, torch.ones_like(mask), order=["table", "text"])  # a sequence that has no image step
    for name in skipped["logits"]:
        assert torch.allclose(skipped["logits"][name], without["logits"][name], atol=1e-6)
    # the step outputs: the image step repeats the table step's prediction
    steps = skipped["steps"]["y"]
    assert steps.shape == (8, 4, 1)
    assert torch.allclose(steps[:, 2], steps[:, 1]) and not torch.allclose(steps[:, 3], steps[:, 2])
    assert not skipped["step_present"][:, 1].any() and skipped["step_present"][:, [0, 2]].all()


def test_sequential_predicts_after_every_step_and_per_sample():
    model = make("sequential")
    x, mask = batch()
    mask[0, 0] = False
    out = model(x, mask)
    assert set(out["steps"]) == {h.name for h in HEADS}
    assert out["steps"]["kind"].shape == (8, 4, 3)
    assert torch.allclose(out["steps"]["y"][:, -1], out["logits"]["y"])
    assert torch.allclose(out["steps"]["y"][0, 1], out["steps"]["y"][0, 0])  # step skipped for sample 0 only
    assert not torch.allclose(out["steps"]["y"][1, 1], out["steps"]["y"][1, 0])


def test_head_shapes():
    for kind in ("sequential", "concat", "attention"):
        out = make(kind)(*batch())["logits"]
        assert out["y"].shape == (8, 1) and out["kind"].shape == (8, 3)
        assert out["tags"].shape == (8, 4) and out["score"].shape == (8, 1)


def test_unknown_head_kind_names_allowed_values():
    with pytest.raises(ValueError, match="binary, multiclass, multilabel, regression"):
        HeadSpec("y", "ordinal")


def test_modality_dropout_is_per_sample_and_keeps_one():
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(2000, 3, dtype=torch.bool)
    mask[:10, 1:] = False  # samples with a single modality
    out = modality_dropout(mask, 0.5, g)
    assert out.any(dim=1).all(), "every sample keeps at least one modality"
    assert (out <= mask).all(), "dropout never adds a modality"
    assert out[:10, 0].all()
    rate = 1 - out[10:].float().mean().item()
    assert 0.35 < rate < 0.5
    assert torch.equal(modality_dropout(mask, 0.0), mask)


def test_learnable_1d_cnn_reads_the_waveform_encoder_output():
    """The signal modality through a small learnable 1D CNN over `signal-waveform` (12 x 1000)."""
    from medweave.encode import get_encoder
    from medweave.encode.loaders import Signal

    enc = get_encoder("signal-waveform")
    t = np.arange(2500) / 250.0
    slow = Signal(np.stack([np.sin(2 * np.pi * 1.0 * t)] * 3).astype(np.float32), 250.0)
    fast = Signal(np.stack([np.sin(2 * np.pi * 8.0 * t)] * 3).astype(np.float32), 250.0)
    x = torch.from_numpy(enc.encode([slow, fast] * 16))
    y = torch.tensor([0.0, 1.0] * 16)
    torch.manual_seed(0)
    model = FUSERS.get("sequential")({"signal": enc.dim}, [HeadSpec("y")], hidden=16, adapters={"signal": "conv1d"})
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    mask = torch.ones(32, 1, dtype=torch.bool)
    for _ in range(60):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model({"signal": x}, mask)["logits"]["y"].reshape(-1), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2, "the CNN learns to tell a 1 Hz from an 8 Hz rhythm"


def test_stacked_logit_is_the_weighted_sum_of_the_present_parts():
    model = make("stacked")
    x, mask = batch()
    mask[:4, 1] = False  # the first four samples have no image
    out = model(x, mask)
    w, b = model.stack_weight.detach(), model.stack_bias.detach()
    for name, h, cols in (("y", 0, slice(0, 1)), ("kind", 1, slice(1, 4))):
        want = b[cols] + sum(mask[:, j:j + 1].float() * w[j, h] * out["parts"][m][name]
                             for j, m in enumerate(model.modalities))
        assert torch.allclose(out["logits"][name], want, atol=1e-6)
    # a part reads its own modality only: the image part's logits do not depend on the table
    x2 = {m: v.clone() for m, v in x.items()}
    x2["table"] += 5.0
    assert torch.allclose(model(x2, mask)["parts"]["image"]["y"], out["parts"]["image"]["y"])
    assert not torch.allclose(model(x2, mask)["parts"]["table"]["y"], out["parts"]["table"]["y"])
