"""Ensemble members fitted side by side in worker processes (``VqaConfig.fit_workers``): the same
weights as fitted one after another in this process, and the automatic choice of how many."""

from __future__ import annotations

import os

import pytest
import torch

from medweave.vqa import model as model_mod
from medweave.vqa.data import load_vqa
from medweave.vqa.features import IMAGE_ENCODERS, open_cache
from medweave.vqa.model import VqaConfig, fit_workers
from medweave.vqa.pipeline import CACHE_NAME, embed_set, fit_set


def _fit(vqa, cache_file, **kw):
    with open_cache(cache_file) as cache:
        img, qe = embed_set(vqa, cache, IMAGE_ENCODERS)
        return fit_set(vqa, img, qe, VqaConfig(seeds=3, epochs=3, **kw), cache)


def test_members_fitted_in_worker_processes_are_the_members_fitted_here(tiny_set, tmp_path, monkeypatch):
    vqa = load_vqa(tiny_set)
    cache_file = tmp_path / CACHE_NAME
    calls = []
    real = model_mod._fit_member
    monkeypatch.setattr(model_mod, "_fit_member", lambda *a: calls.append(a[2]) or real(*a))
    here = _fit(vqa, cache_file, fit_workers=1)
    assert calls == [0, 1, 2]  # in this process, one after another
    calls.clear()
    apart = _fit(vqa, cache_file, fit_workers=2)
    assert calls == []  # none in this process: the spawned workers fitted them
    assert len(apart.members) == 3
    for a, b in zip(here.members, apart.members):
        assert a.keys() == b.keys()
        for k in a:
            assert isinstance(b[k], torch.Tensor) and torch.equal(a[k], b[k]), k
    assert not torch.equal(here.members[0]["answer.1.weight"], here.members[1]["answer.1.weight"])
    with open_cache(cache_file) as cache:
        img, qe = embed_set(vqa, cache, IMAGE_ENCODERS)
    texts = [q.question for q in vqa.questions]
    assert [p.answer for p in here.predict(img, qe, questions=texts)] == \
        [p.answer for p in apart.predict(img, qe, questions=texts)]


def test_the_automatic_choice_parallelises_only_a_fit_large_enough_to_pay(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    big = model_mod.FIT_PARALLEL_MIN
    assert fit_workers(VqaConfig(seeds=8, epochs=60), big) == 2  # one per core
    assert fit_workers(VqaConfig(seeds=8, epochs=1), 10) == 1  # too small to pay a worker's start
    assert fit_workers(VqaConfig(seeds=1, epochs=60), big) == 1  # one member: nothing side by side
    assert fit_workers(VqaConfig(seeds=3, fit_workers=5), 10) == 3  # asked: at most one per member
    assert fit_workers(VqaConfig(seeds=3, fit_workers=1), big) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert fit_workers(VqaConfig(seeds=8, epochs=60), big) == 1  # one core


@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_fit_workers_must_be_a_count(value):
    with pytest.raises(ValueError, match="fit_workers"):
        VqaConfig(fit_workers=value)


def test_a_worker_that_fails_is_an_error_naming_its_members_and_its_reason(tmp_path):
    from medweave.vqa.fitworker import run_workers

    with pytest.raises(RuntimeError, match=r"members \[0, 2\]: exit status 1: .*job\.json.*fit_workers=1"):
        run_workers(tmp_path, VqaConfig(seeds=3), [[0, 2], [1]])  # no job written: every worker fails
