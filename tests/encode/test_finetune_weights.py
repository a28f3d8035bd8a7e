"""Per-picture loss weights in the encoder fine-tuning (``PictureTargets.weights``): equal weights are the
plain mean, unequal ones change what the tail learns."""

from __future__ import annotations

import numpy as np

from medweave.encode.finetune import FinetuneConfig, PictureTargets, finetune


def _pictures(n: int = 8):
    rng = np.random.default_rng(0)
    return [rng.uniform(0, 255, (48, 48)).astype(np.float32) for _ in range(n)]


def test_equal_weights_are_the_plain_mean_and_unequal_ones_differ():
    pics = _pictures()
    y = np.array([0, 1] * 4)
    cfg = FinetuneConfig(blocks_tuned=1, epochs=2, augmentations=0, batch_size=4, size=64)
    plain = finetune(pics, PictureTargets({"t": (y, ["0", "1"])}), cfg)
    equal = finetune(pics, PictureTargets({"t": (y, ["0", "1"])}, weights=np.full(8, 0.25)), cfg)
    assert np.allclose(plain.losses, equal.losses, rtol=1e-4)
    for k in plain.state:
        assert np.allclose(plain.state[k], equal.state[k], atol=1e-5)
    skewed = finetune(pics, PictureTargets({"t": (y, ["0", "1"])}, weights=np.array([1.0] + [1e-3] * 7)), cfg)
    assert skewed.version != plain.version
    assert not np.allclose(skewed.losses, plain.losses, rtol=1e-3)
