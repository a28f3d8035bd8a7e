"""Picture augmentation in embedding space (``VqaConfig.picture_augment``, ``medweave.vqa.augment``): K
augmented copies of each training picture through the frozen views, cached under keys of their own, one
of {clean, copies} drawn per row and epoch; off builds the network it built before."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medweave.vqa import augment as aug_mod
from medweave.vqa import model as model_mod
from medweave.vqa.augment import AugmentedView, augmented_encoders, picture_copies
from medweave.vqa.data import load_vqa
from medweave.vqa.features import IMAGE_ENCODERS, embed_image_files, open_cache
from medweave.vqa.model import Answerer, VqaConfig, _draw_pictures
from medweave.vqa.pipeline import CACHE_NAME, embed_set, fit_set, train_vqa

from .conftest import medweave


@pytest.fixture(scope="module")
def tiny(tiny_set, tmp_path_factory):
    """(the tiny set, a cache folder with its clean embeddings and 2 copies of both views cached)."""
    root = tmp_path_factory.mktemp("augment")
    vqa = load_vqa(tiny_set)
    with open_cache(root / CACHE_NAME) as cache:
        embed_set(vqa, cache, IMAGE_ENCODERS)
        picture_copies([vqa.image_path(n) for n in vqa.image_names()], cache, IMAGE_ENCODERS, 2)
    return vqa, root / CACHE_NAME


def test_each_copy_and_view_has_its_own_cache_key_and_a_changed_augmentation_a_new_one(monkeypatch):
    encs = augmented_encoders(IMAGE_ENCODERS, 2)
    keys = {(e.name, e.version) for e in encs}
    assert len(keys) == 4  # 2 copies x 2 views
    assert {e.name for e in encs} == {f"{v}+augment" for v in IMAGE_ENCODERS}  # never a clean view's name
    assert AugmentedView(IMAGE_ENCODERS[0], 1, seed=1).version != AugmentedView(IMAGE_ENCODERS[0], 1).version
    before = AugmentedView(IMAGE_ENCODERS[0], 1).version
    monkeypatch.setattr(aug_mod, "AUGMENT_VERSION", "changed")
    assert AugmentedView(IMAGE_ENCODERS[0], 1).version != before
    with pytest.raises(ValueError, match="numbered from 1"):
        AugmentedView(IMAGE_ENCODERS[0], 0)


def test_copies_are_cached_by_picture_hash_differ_from_the_clean_row_and_are_reproducible(tiny):
    vqa, cache_file = tiny
    paths = [vqa.image_path(n) for n in vqa.image_names()]
    with open_cache(cache_file) as cache:
        for e in augmented_encoders(IMAGE_ENCODERS, 2):
            assert cache.count(e.name) == 2 * len(paths)  # 2 copies (versions) of every picture
        cached = picture_copies(paths, cache, IMAGE_ENCODERS, 2)
        clean = embed_image_files(paths, cache, IMAGE_ENCODERS)
    fresh = picture_copies(paths[:3], None, IMAGE_ENCODERS, 2)  # no cache: encoded again, the same draws
    np.testing.assert_allclose(fresh, cached[:3], rtol=1e-4, atol=1e-4)
    assert cached.shape == (len(paths), 2, clean.shape[1])
    for k in range(2):
        gap = np.abs(cached[:, k] - clean).max(axis=1)
        assert (gap > 1e-2).all()  # every copy is another embedding than the clean picture's
    assert (np.abs(cached[:, 0] - cached[:, 1]).max(axis=1) > 1e-2).all()  # and copies differ from each other


def test_draw_mixes_clean_and_copies_as_asked():
    clean = torch.zeros(4000, 1)
    copies = torch.arange(1, 4).float()[:, None, None].expand(3, 1, 1).contiguous()  # copy k reads k
    pic = torch.zeros(4000, dtype=torch.long)
    x = _draw_pictures(clean, copies, pic, None, torch.Generator().manual_seed(0))[:, 0].numpy()
    share = np.bincount(x.astype(int), minlength=4) / len(x)
    np.testing.assert_allclose(share, 0.25, atol=0.03)  # uniform over clean + 3 copies
    x = _draw_pictures(clean, copies, pic, 0.5, torch.Generator().manual_seed(0))[:, 0].numpy()
    share = np.bincount(x.astype(int), minlength=4) / len(x)
    assert abs(share[0] - 0.5) < 0.03 and np.allclose(share[1:], 0.5 / 3, atol=0.03)
    assert not _draw_pictures(clean, copies, pic, 1.0, torch.Generator().manual_seed(0)).any()  # always clean


def _fit(vqa, cache_file, **kw):
    with open_cache(cache_file) as cache:
        img, qe = embed_set(vqa, cache, IMAGE_ENCODERS)
        return fit_set(vqa, img, qe, VqaConfig(seeds=2, epochs=4, **kw), cache)


def _same(a: Answerer, b: Answerer) -> bool:
    return all(torch.equal(x[k], y[k]) for x, y in zip(a.members, b.members) for k in x)


def test_a_fit_with_copies_draws_them_and_off_is_the_plain_network(tiny, monkeypatch):
    vqa, cache_file = tiny
    calls = []
    real_draw = model_mod._draw_pictures
    monkeypatch.setattr(model_mod, "_draw_pictures", lambda *a: calls.append(a[1].shape) or real_draw(*a))
    off = _fit(vqa, cache_file)
    assert not calls  # off: no draw at all
    on = _fit(vqa, cache_file, picture_augment=2)
    assert len(calls) == 2 * 4 and calls[0][0] == 2  # every epoch of both members, from 2 copies
    assert not _same(off, on)
    # the copies' own generator leaves the clean path's draws alone: always drawing the clean picture
    # trains exactly the network a fit without copies trains (the same seed)
    assert _same(off, _fit(vqa, cache_file, picture_augment=2, picture_augment_clean=1.0))
    # the answer side keeps the clean embeddings: memory and picture statistics as without copies
    np.testing.assert_array_equal(on.mem_img, off.mem_img)
    np.testing.assert_array_equal(on.img_mean, off.img_mean)


def test_fit_needs_the_copies_and_checks_their_shape(tiny):
    vqa, cache_file = tiny
    with open_cache(cache_file) as cache:
        img, qe = embed_set(vqa, cache, IMAGE_ENCODERS)
    answers = [q.answer for q in vqa.questions]
    closed = np.array([q.closed for q in vqa.questions])
    cases = [{"question_type": q.question_type} for q in vqa.questions]
    cfg = VqaConfig(seeds=1, epochs=1, picture_augment=2)
    with pytest.raises(ValueError, match="augmented copies"):
        Answerer.fit(img, qe, answers, closed, cases, cfg)
    with pytest.raises(ValueError, match="picture_copies"):
        Answerer.fit(img, qe, answers, closed, cases, cfg,
                     picture_copies=(np.zeros((3, 1, img.shape[1]), np.float32), [0] * len(answers)))


@pytest.mark.parametrize("bad", [-1, 1.5, True, "4"])
def test_bad_k_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="picture_augment is"):
        VqaConfig(picture_augment=bad)


def test_bad_clean_share_and_finetuning_together_are_errors():
    with pytest.raises(ValueError, match="picture_augment_clean is"):
        VqaConfig(picture_augment=2, picture_augment_clean=1.5)
    with pytest.raises(ValueError, match="frozen encoders"):
        VqaConfig(picture_augment=2, finetune_blocks=1)


def test_cli_rejects_a_bad_k(tiny_set, tmp_path):
    proc = medweave("vqa", "train", "--data", str(tiny_set), "--out", str(tmp_path / "m"), "--picture-augment", "-2",
                    check=False)
    assert proc.returncode != 0 and "picture_augment is -2" in proc.stdout + proc.stderr


def test_saved_with_the_model_and_a_model_saved_before_loads_with_it_off(tiny_set, tmp_path):
    model, _ = train_vqa(tiny_set, tmp_path / "m", VqaConfig(seeds=1, epochs=2, views=1, picture_augment=2))
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["config"]["picture_augment"] == 2
    assert Answerer.load(tmp_path / "m").cfg.picture_augment == 2
    for key in ("picture_augment", "picture_augment_clean"):  # as a model saved before the option
        del config["config"][key]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    loaded = Answerer.load(tmp_path / "m")
    assert loaded.cfg.picture_augment == 0 and loaded.cfg.picture_augment_clean is None
