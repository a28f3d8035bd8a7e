"""Fine-tuning EfficientNet-Lite0's last blocks on the CPU, and the fine-tuned encoder.

The backbone is split at block ``len(blocks) - blocks_tuned``: the front (stem and the first blocks) stays
frozen, the tail (the last ``blocks_tuned`` MBConv blocks and the 1x1 head convolution) learns. Each
picture goes through the front once per augmented copy (``augment``: small rotations, crops, intensity
windows and gamma; never a horizontal flip, since "left"/"right" answers depend on it); the tail then
trains on those cached feature maps with image-only heads (``PictureTargets``: one softmax head per
picture-level label such as organ, modality, plane, and a multi-label head over the answers given about
the picture). That keeps a fine-tuning run to about a minute for 300 pictures on one core.

``FineTunedLite0`` is an ``Encoder`` whose ``version`` is the hash of its tail weights, so the embedding
cache never hands out vectors of another tuning (or of the frozen backbone) for it.
"""

from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np

from .base import Encoder, array_hash
from .image import SIZE, load_backbone, middle_slice, window_to_uint8

FT_NAME = "efficientnet-lite0-ft"


@dataclass
class FinetuneConfig:
    """Fine-tuning choices (``medweave vqa train --finetune-blocks N``)."""

    blocks_tuned: int = 1       # last MBConv blocks that learn (Lite0 has 16; the head conv always learns)
    augmentations: int = 4      # augmented copies per picture (plus the picture itself)
    epochs: int = 15
    batch_size: int = 32
    lr: float = 3e-4            # for the tail; the heads learn at 10x
    weight_decay: float = 1e-2
    rotate_degrees: float = 10.0
    crop_scale: float = 0.85    # smallest crop side as a share of the picture side
    window_jitter: float = 3.0  # percentiles the intensity window's ends move by (0.5-99.5 at rest)
    gamma: float = 0.2          # gamma drawn from [1 - gamma, 1 + gamma]
    seed: int = 0
    threads: int = 1
    size: int = SIZE            # picture side fed to the backbone (224: the size it was trained at)


def augment(arr: np.ndarray, rng: np.random.Generator, cfg: FinetuneConfig, size: int = SIZE) -> np.ndarray:
    """One radiology-safe augmented copy of a picture as a (3, size, size) model input: a crop of
    ``crop_scale``..1 of each side at a random place, a rotation within ±``rotate_degrees``, a jittered
    percentile window and a gamma; no flip."""
    from PIL import Image

    arr = np.asarray(middle_slice(arr), dtype=np.float32)
    finite = arr[np.isfinite(arr)]
    lo_p = float(np.clip(0.5 + rng.uniform(-1, 1) * cfg.window_jitter, 0.0, 10.0))
    hi_p = float(np.clip(99.5 + rng.uniform(-1, 1) * cfg.window_jitter, 90.0, 100.0))
    lo, hi = np.percentile(finite, [lo_p, hi_p]) if finite.size else (0.0, 0.0)
    if hi <= lo:
        img8 = window_to_uint8(arr)
    else:
        x = (np.clip(np.nan_to_num(arr, nan=lo), lo, hi) - lo) / (hi - lo)
        img8 = (255.0 * x ** rng.uniform(1 - cfg.gamma, 1 + cfg.gamma)).astype(np.uint8)
    im = Image.fromarray(img8, mode="RGB" if img8.ndim == 3 else "L")
    w, h = im.size
    s = rng.uniform(cfg.crop_scale, 1.0)
    cw, ch = max(1, int(w * s)), max(1, int(h * s))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    im = im.crop((x0, y0, x0 + cw, y0 + ch)).rotate(float(rng.uniform(-1, 1) * cfg.rotate_degrees),
                                                     resample=Image.BILINEAR)
    out = np.asarray(im.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
    out = np.repeat(out[None], 3, axis=0) if out.ndim == 2 else out.transpose(2, 0, 1)
    return (out - 0.5) / 0.5


def _split_point(blocks_tuned: int) -> int:
    n = len(load_backbone()._blocks)
    if not 0 <= blocks_tuned <= n:
        raise ValueError(f"blocks_tuned is {blocks_tuned}; EfficientNet-Lite0 has {n} blocks (allowed 0..{n})")
    return n - blocks_tuned


def front_features(batch: np.ndarray, blocks_tuned: int) -> np.ndarray:
    """(B, 3, H, W) inputs -> the frozen front's feature maps (input of the tail)."""
    import torch

    model = load_backbone()
    k = _split_point(blocks_tuned)
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(batch))
        x = model._swish(model._bn0(model._conv_stem(x)))  # ReLU6 in the Lite models
        n = len(model._blocks)
        for idx, block in enumerate(model._blocks[:k]):
            x = block(x, drop_connect_rate=_drop_rate(model, idx, n))
        return x.numpy().astype(np.float32)


_FRONT_MEMO: dict[tuple, np.ndarray] = {}  # front maps by (picture hash, split point, copy, augmentation)
_FRONT_MEMO_MAX = 6000  # 37 KB each at the default split point (192 x 7 x 7 floats)


def front_maps(pictures: Sequence[np.ndarray], cfg: FinetuneConfig, copy_index: int,
               remember: bool = True) -> np.ndarray:
    """Front feature maps of one copy of every picture: copy 0 the picture itself (``to_input``), copy
    k > 0 an augmentation drawn from a generator seeded by (seed, picture, k), so a picture's copies are
    the same whatever the order or split. Kept in memory by picture content with ``remember`` (split
    seeds of one process and the re-encoding after tuning reuse them; at most ``_FRONT_MEMO_MAX``)."""
    from .image import to_input

    aug = (cfg.rotate_degrees, cfg.crop_scale, cfg.window_jitter, cfg.gamma, cfg.seed) if copy_index else ()
    keys = [(array_hash(p), cfg.blocks_tuned, cfg.size, copy_index, aug) for p in pictures]
    todo = [i for i, k in enumerate(keys) if k not in _FRONT_MEMO]
    fresh: dict[tuple, np.ndarray] = {}
    for b in range(0, len(todo), 32):
        idx = todo[b:b + 32]
        batch = np.stack([to_input(pictures[i], cfg.size) if copy_index == 0 else augment(
            pictures[i], np.random.default_rng([cfg.seed, int(keys[i][0][:8], 16), copy_index]), cfg, cfg.size)
            for i in idx])
        for i, m in zip(idx, front_features(batch, cfg.blocks_tuned)):
            fresh[keys[i]] = m
            if remember:
                if len(_FRONT_MEMO) >= _FRONT_MEMO_MAX:
                    _FRONT_MEMO.pop(next(iter(_FRONT_MEMO)))
                _FRONT_MEMO[keys[i]] = m
    return np.stack([fresh[k] if k in fresh else _FRONT_MEMO[k] for k in keys])


def _drop_rate(model, idx: int, n: int) -> float:
    rate = getattr(model._global_params, "drop_connect_rate", None) or 0.0
    return rate * float(idx) / n


def build_tail(blocks_tuned: int, state: dict | None = None):
    """The trainable tail (last blocks, head conv, pooling) as a module: a copy of the pretrained one,
    with ``state`` loaded when given."""
    import torch
    from torch import nn

    model = load_backbone()
    k = _split_point(blocks_tuned)

    class Tail(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(copy.deepcopy(b) for b in model._blocks[k:])
            self.conv_head = copy.deepcopy(model._conv_head)
            self.bn1 = copy.deepcopy(model._bn1)
            self.act = copy.deepcopy(model._swish)
            self.offset, self.total = k, len(model._blocks)

        def forward(self, x: "torch.Tensor") -> "torch.Tensor":
            for j, block in enumerate(self.blocks):
                x = block(x, drop_connect_rate=_drop_rate(model, self.offset + j, self.total))
            return self.act(self.bn1(self.conv_head(x))).mean(dim=(2, 3))

    tail = Tail()
    for p in tail.parameters():
        p.requires_grad_(True)
    if state is not None:
        tail.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
    return tail


def state_hash(state: dict) -> str:
    """A short sha256 over a state dict's names, shapes and bytes (the fine-tuned encoder's version)."""
    h = hashlib.sha256()
    for k in sorted(state):
        v = np.ascontiguousarray(np.asarray(state[k]))
        h.update(k.encode() + str(v.shape).encode() + str(v.dtype).encode() + v.tobytes())
    return h.hexdigest()[:16]


@dataclass
class PictureTargets:
    """Picture-level training labels: per head name, one class index per picture (-1: unknown) and the
    class names; ``multi`` a (pictures, labels) 0/1 matrix (answers given about each picture)."""

    single: dict[str, tuple[np.ndarray, list[str]]] = field(default_factory=dict)
    multi: np.ndarray | None = None
    multi_names: list[str] = field(default_factory=list)
    weights: np.ndarray | None = None  # per-picture loss weights (e.g. 1 / the patient's pictures); None: 1


@dataclass
class FinetuneResult:
    state: dict                      # tail state dict (numpy arrays)
    version: str
    cfg: FinetuneConfig
    seconds: float
    losses: list[float]
    heads: dict = field(default_factory=dict)  # what the image-only heads predicted (for the record)

    def encoder(self) -> "FineTunedLite0":
        return FineTunedLite0(self.state, self.cfg.blocks_tuned, self.cfg.size)

    def info(self) -> dict:
        return {"encoder": FT_NAME, "version": self.version, "config": asdict(self.cfg),
                "seconds": round(self.seconds, 1), "losses": [round(x, 4) for x in self.losses], "heads": self.heads}


def finetune(pictures: Sequence[np.ndarray], targets: PictureTargets, cfg: FinetuneConfig | None = None,
             progress: Callable[[str], None] | None = None) -> FinetuneResult:
    """Fine-tune the tail on pictures (arrays as ``read_image`` gives them) with image-only heads."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    from .text import torch_threads

    cfg = cfg or FinetuneConfig()
    t0 = time.perf_counter()
    n = len(pictures)
    if n == 0:
        raise ValueError("fine-tuning: no pictures")
    with torch_threads(cfg.threads):
        copies = [front_maps(pictures, cfg, a) for a in range(cfg.augmentations + 1)]  # the clean one first
        if progress:
            progress(f"fine-tuning: front features of {cfg.augmentations + 1} copies of {n} pictures")
        maps = torch.from_numpy(np.stack(copies, axis=1))  # (n, copies, C, H, W)
        torch.manual_seed(cfg.seed)
        tail = build_tail(cfg.blocks_tuned)
        heads = nn.ModuleDict({name: nn.Linear(1280, len(names)) for name, (_, names) in targets.single.items()})
        multi = torch.from_numpy(targets.multi.astype(np.float32)) if targets.multi is not None and \
            targets.multi.shape[1] else None
        multi_head = nn.Linear(1280, multi.shape[1]) if multi is not None else None
        labels = {name: torch.from_numpy(np.asarray(y, dtype=np.int64)) for name, (y, _) in targets.single.items()}
        weights = None if targets.weights is None else torch.from_numpy(np.asarray(targets.weights, np.float32))
        head_params = list(heads.parameters()) + (list(multi_head.parameters()) if multi_head is not None else [])
        opt = torch.optim.AdamW([{"params": tail.parameters(), "lr": cfg.lr},
                                 {"params": head_params, "lr": 10 * cfg.lr}], weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(cfg.seed)
        losses = []
        tail.train()
        for m in tail.modules():  # batch statistics of 32 small maps are noisy: keep the pretrained ones
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        for epoch in range(cfg.epochs):
            perm = torch.randperm(n, generator=gen)
            total, count = 0.0, 0
            for b in range(0, n, cfg.batch_size):
                j = perm[b:b + cfg.batch_size]
                pick = torch.randint(0, maps.shape[1], (len(j),), generator=gen)
                z = tail(maps[j, pick])
                loss = z.new_zeros(())
                for name, head in heads.items():
                    y = labels[name][j]
                    known = y >= 0
                    if known.any() and weights is None:
                        loss = loss + F.cross_entropy(head(z[known]), y[known])
                    elif known.any():  # the weighted mean over the batch's labelled pictures
                        w = weights[j][known]
                        loss = loss + (F.cross_entropy(head(z[known]), y[known], reduction="none") * w).sum() / w.sum()
                if multi_head is not None and weights is None:
                    loss = loss + F.binary_cross_entropy_with_logits(multi_head(z), multi[j]) * 10.0
                elif multi_head is not None:
                    per = F.binary_cross_entropy_with_logits(multi_head(z), multi[j], reduction="none").mean(1)
                    loss = loss + (per * weights[j]).sum() / weights[j].sum() * 10.0
                opt.zero_grad()
                loss.backward()
                opt.step()
                total, count = total + float(loss.detach()) * len(j), count + len(j)
            losses.append(total / count)
            if progress:
                progress(f"fine-tuning: epoch {epoch + 1}/{cfg.epochs}, loss {losses[-1]:.4f}")
        tail.eval()
    state = {k: v.detach().numpy().copy() for k, v in tail.state_dict().items()}
    return FinetuneResult(state, state_hash(state), cfg, time.perf_counter() - t0, losses)


class FineTunedLite0(Encoder):
    """EfficientNet-Lite0 at 224 (or ``size``) with a fine-tuned tail; ``version`` = hash of the tail
    weights (and the size when it is not 224)."""

    name = FT_NAME
    modalities = ("image",)
    dim = 1280
    batch_size = 32

    def __init__(self, state: dict, blocks_tuned: int, size: int = SIZE) -> None:
        self.state, self.blocks_tuned, self.size = state, int(blocks_tuned), int(size)
        self.version = "1-" + ("" if self.size == SIZE else f"{self.size}-") + state_hash(state)
        self._tail = None

    def describe(self) -> dict:
        return {**super().describe(), "blocks_tuned": self.blocks_tuned, "size": self.size}

    def encode(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        if self._tail is None:
            self._tail = build_tail(self.blocks_tuned, self.state).eval()
        maps = front_maps(list(inputs), FinetuneConfig(blocks_tuned=self.blocks_tuned, size=self.size), 0,
                          remember=False)
        with torch.inference_mode():
            return self._tail(torch.from_numpy(maps)).numpy().astype(np.float32)
