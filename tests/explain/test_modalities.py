"""Modality contributions: exact Shapley values with absent = masked."""

import dataclasses
import itertools
from math import factorial

import numpy as np
import pytest
import torch

from medweave.explain import coalition_values, explain_modalities, modality_shapley
from medweave.explain.modalities import shapley_weights
from medweave.train import build_model


def _all(ctx):
    x, mask, _ = ctx.dataset.tensors()
    return x, mask


@pytest.mark.parametrize("kind", ["sequential", "concat", "attention"])
def test_shapley_sums_to_full_minus_all_absent_for_every_case(ctx, kind):
    if kind != "sequential":  # the same property for the other fusers (fresh weights, still a function of the mask)
        dims = {m: a.shape[1] for m, a in ctx.dataset.inputs.items()}
        ctx = dataclasses.replace(ctx, model=build_model(kind, dims, ctx.model.head_specs, seed=1).eval())
    x, mask = _all(ctx)
    res = modality_shapley(ctx, x, mask)
    with torch.no_grad():
        full = ctx.score(x, mask).double().numpy()
        empty = ctx.score(x, torch.zeros_like(mask)).double().numpy()
    np.testing.assert_allclose(res["full"], full, atol=1e-6)
    np.testing.assert_allclose(res["empty"], empty, atol=1e-6)
    np.testing.assert_allclose(res["values"].sum(1), full - empty, atol=1e-6)
    # a modality the case lacks is a null player: exactly zero
    assert np.all(res["values"][~mask.numpy()] == 0)


def test_weights_match_the_permutation_definition(ctx):
    x, mask = ctx.case_tensors(ctx.dataset.case_ids[0])
    v = coalition_values(ctx, x, mask)[0]
    m = mask.shape[1]
    brute = np.zeros(m)
    for perm in itertools.permutations(range(m)):
        k = 0
        for j in perm:
            brute[j] += v[k | (1 << j)] - v[k]
            k |= 1 << j
    brute /= factorial(m)
    np.testing.assert_allclose(v @ shapley_weights(m).T, brute, atol=1e-12)


def test_step_trace_ends_at_the_prediction_and_skips_absent(ctx):
    partial = [c for i, c in enumerate(ctx.dataset.case_ids) if not ctx.dataset.mask[i].all()][0]
    e = explain_modalities(ctx, partial)
    assert e["steps"][-1]["prob"] == pytest.approx(e["prediction"], abs=1e-6)
    assert e["steps"][0]["prob"] == pytest.approx(e["all_absent"], abs=1e-6)
    for s, prev in zip(e["steps"][1:], e["steps"][:-1]):
        if not s["updated"]:
            assert s["prob"] == pytest.approx(prev["prob"], abs=1e-7)
            assert s["step"] not in e["present"]
