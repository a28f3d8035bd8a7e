"""The answerer's two picture views (EfficientNet-Lite0 at 224 and at 320 pixels) and the ensemble
members that read them."""

from __future__ import annotations

import numpy as np

from medweave.encode import get_encoder
from medweave.vqa.data import read_image
from medweave.vqa.features import IMAGE_ENCODERS, embed_image_files, embed_questions
from medweave.vqa.model import Answerer


def test_picture_embedding_holds_the_224_and_320_views(tiny_set):
    paths = sorted((tiny_set / "images").glob("*.png"))[:2]
    emb = embed_image_files(paths)
    assert IMAGE_ENCODERS == ("efficientnet-lite0", "efficientnet-lite0-320") and emb.shape == (2, 2560)
    arrays = [read_image(p) for p in paths]
    np.testing.assert_allclose(emb[:, :1280], get_encoder("efficientnet-lite0").encode(arrays), atol=1e-5)
    np.testing.assert_allclose(emb[:, 1280:], get_encoder("efficientnet-lite0-320").encode(arrays), atol=1e-5)
    assert not np.allclose(emb[:, :1280], emb[:, 1280:], atol=1e-3)


def test_each_member_reads_its_own_view(tiny_model, tiny_set):
    model = Answerer.load(tiny_model)
    assert model.cfg.views == 2 and len(model._networks()) == 2
    img = embed_image_files([tiny_set / "images" / "img00.png"])
    qe = embed_questions(["Which side is the opacity on?"])
    base, _ = model.classifier_probs(img, qe)
    for view in (0, 1):
        changed = img.copy()
        changed[:, view * 1280:(view + 1) * 1280] = model.img_mean[view * 1280:(view + 1) * 1280]
        probs, _ = model.classifier_probs(changed, qe)
        assert not np.allclose(probs, base, atol=1e-4), f"view {view} is read by no member"
