"""The picture gate: the answerer abstains when the picture holds no readable content.

A blank, constant or pure-noise picture, or one far outside the training pictures' distribution,
carries nothing the answerer can read; answering it anyway means answering from the question alone
(on VQA-RAD's test-like split a blank picture scored 0.208 on open questions that way). The gate
measures one signal, the cosine of the asked picture's embedding (all views side by side,
L2-normalised, as the memory holds them) to its **nearest training picture**, and abstains below a
threshold calibrated on the training pictures only:

- the **median pair cosine**: two training pictures drawn at random are typically this alike (pairs
  of at most ``PAIR_SAMPLE`` pictures, a fixed sample); a picture less like its *nearest* training
  picture than that is unlike every one of them;
- each training picture's nearest *other* training picture (leave-one-out) gives the cosines a new
  picture of the training distribution reaches; the threshold never exceeds min - ``MARGIN`` *
  (median - min) of those, so that a picture as atypical as the least typical training one, and a
  little more, is still answered where the training pictures are far apart;
- threshold = the smaller of the two; nothing else is fitted (the rule's form and its ``MARGIN`` were
  chosen on VQA-RAD, the phantom and the tiny test set: README).

Pixel statistics need no signal of their own: the encoders window every picture to its 0.5-99.5
percentiles (``encode.image.window_to_uint8``), so any constant picture, whatever its grey level,
becomes the all-zero input and the same embedding as a blank one, and noise lands far from every
radiograph (measured on VQA-RAD: blank 0.42 and uniform noise 0.35-0.37 against a threshold of 0.465,
held-out pictures 0.70 or more; README "The picture gate"). On PathVQA it does not work: noise lands
near pathology pictures (0.83-0.89), and only pixel statistics, not kept by the answerer, tell them apart.

The calibration is saved in the model's ``config.json`` (``picture_gate``, with its ``version``); a
model saved before it has none and answers as before, with the gate off (``status``).
"""

from __future__ import annotations

import numpy as np

GATE_VERSION = 2  # 2: with the pixel statistics; a version-1 calibration (embedding only) still loads
VERSIONS = (1, 2)
MARGIN = 0.5
PIXEL_MARGIN = 0.5
PAIR_SAMPLE = 2000
SIGNAL = "cosine of the picture embedding to its nearest training picture"
REASON = "the picture holds no readable content"
ABSTAINED = "[abstained]"  # the text of a chat reply that abstains: ABSTAINED + " " + the reason


def chat_text(reason: str) -> str:
    """The reply text of an abstention where a text is needed (OpenAI-compatible chat, the harness):
    never empty, and read as no answer by ``evaluate.extract.is_abstention``."""
    return f"{ABSTAINED} {reason}"


def pixel_stats(arr: np.ndarray) -> np.ndarray:
    """[intensity sd, neighbouring-pixel correlation] of a picture as the encoders see it (grey, a
    volume's middle slice, windowed to its 0.5-99.5 percentiles: ``encode.image.window_to_uint8``, so a
    faint but real picture is not taken for a constant one): 0 and 0 for a constant picture; about 0
    correlation for pixel noise, near 1 for a picture of anything (VQA-RAD's lowest 0.80, PathVQA's
    0.31 of 600 pictures)."""
    from ..encode.image import middle_slice, window_to_uint8

    x = np.asarray(arr)
    if x.ndim > 2 and not (x.ndim == 3 and x.shape[-1] in (3, 4)):
        x = middle_slice(x)
    if x.ndim == 3:  # colour: the grey the encoders read
        x = x[..., :3].mean(-1)
    x = window_to_uint8(x).astype(np.float64)
    sd = float(x.std())
    if sd == 0 or min(x.shape) < 2:
        return np.array([sd, 0.0], np.float32)

    def corr(a, b):
        a, b = a - a.mean(), b - b.mean()
        d = np.sqrt((a * a).sum() * (b * b).sum())
        return float((a * b).sum() / d) if d > 0 else 0.0

    return np.array([sd, 0.5 * (corr(x[:, :-1], x[:, 1:]) + corr(x[:-1], x[1:]))], np.float32)


def _pixel_encoder():
    from ..encode.base import Encoder

    class PixelStats(Encoder):
        """The pixel statistics as an "encoder", so the embedding cache keeps them by content hash beside
        a picture's embeddings and a picture is decoded once for both."""

        name, version, modalities, dim, batch_size = "picture-pixel-stats", "1", ("image",), 2, 4096

        def encode(self, inputs):
            return np.stack([pixel_stats(a) for a in inputs]).astype(np.float32)

    return PixelStats()


_PIXEL: list = []


def pixel_encoder():
    """The (one) pixel-statistics encoder (``features.embed_image_files(..., with_stats=True)``)."""
    if not _PIXEL:
        _PIXEL.append(_pixel_encoder())
    return _PIXEL[0]


def distinct_rows(x: np.ndarray) -> np.ndarray:
    """The distinct rows of ``x`` (one per training picture: the memory holds one row per question)."""
    return np.unique(np.asarray(x, dtype=np.float32), axis=0)


def nearest_other(pictures: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Per row of L2-normalised ``pictures`` (distinct), the cosine to its nearest other row."""
    out = np.empty(len(pictures), np.float32)
    for b in range(0, len(pictures), chunk):
        s = pictures[b:b + chunk] @ pictures.T
        s[np.arange(len(s)), np.arange(b, b + len(s))] = -np.inf
        out[b:b + chunk] = s.max(1)
    return out


def calibrate(train_pictures: np.ndarray, stats: np.ndarray | None = None) -> dict:
    """The gate's calibration from the training pictures' L2-normalised embeddings (one row per
    picture or per question; duplicates are dropped) and, when given, their pixel statistics
    (``pixel_stats`` rows, aligned with ``train_pictures``): a picture below ``PIXEL_MARGIN`` times the
    lowest training intensity sd or neighbouring-pixel correlation has no readable content either.
    Fewer than 2 distinct pictures: no calibration (``{}``, gate off), since a picture has no nearest
    other picture to measure."""
    pics = distinct_rows(train_pictures)
    if len(pics) < 2:
        return {}
    loo = nearest_other(pics)
    lo, mid = float(loo.min()), float(np.median(loo))
    sample = pics if len(pics) <= PAIR_SAMPLE else pics[np.random.default_rng(0).choice(len(pics), PAIR_SAMPLE,
                                                                                          replace=False)]
    pair = float(np.median((sample @ sample.T)[np.triu_indices(len(sample), 1)]))
    floor = lo - MARGIN * (mid - lo)
    pixel = {}
    if stats is not None and len(stats):
        st = np.asarray(stats, dtype=np.float64)
        pixel = {"pixel": {"sd_min": float(st[:, 0].min()), "corr_min": float(st[:, 1].min()),
                           "sd_threshold": PIXEL_MARGIN * float(st[:, 0].min()),
                           "corr_threshold": PIXEL_MARGIN * float(st[:, 1].min()), "margin": PIXEL_MARGIN}}
    return {**pixel, "version": GATE_VERSION, "signal": SIGNAL, "threshold": min(pair, floor),
            "pair_median": pair, "loo_floor": floor, "margin": MARGIN, "pictures": int(len(pics)),
            "loo_min": lo, "loo_median": mid, "loo_q01": float(np.quantile(loo, 0.01)),
            "rule": f"threshold = the smaller of the training pictures' median pair cosine and min - {MARGIN} * "
                    "(median - min) of each training picture's cosine to its nearest other training picture"}


def status(gate: dict) -> str:
    """What the answer's metadata says of the gate."""
    if not gate:
        return "off: this model holds no picture-gate calibration (saved before the gate, or trained on one picture)"
    px = gate.get("pixel")
    pixel = (f", or below intensity sd {px['sd_threshold']:.1f} or neighbouring-pixel correlation "
             f"{px['corr_threshold']:.2f} where the pixels are at hand") if px else ""
    return (f"on: abstains below cosine {gate['threshold']:.3f} to the nearest training picture{pixel} "
            f"(calibrated on {gate['pictures']} training pictures, version {gate['version']})")


def _pixel_fail(stats, gate: dict) -> np.ndarray:
    """(n, 2) boolean: intensity sd / neighbouring-pixel correlation below the gate's pixel thresholds."""
    px = gate.get("pixel")
    st = np.atleast_2d(np.asarray(stats, dtype=np.float64))
    if not px:
        return np.zeros(st.shape, dtype=bool)
    return np.stack([st[:, 0] < px["sd_threshold"], st[:, 1] < px["corr_threshold"]], axis=1)


def unreadable(nearest_cos: np.ndarray, gate: dict, stats: np.ndarray | None = None) -> np.ndarray:
    """Boolean per row: the picture is below the gate's embedding threshold or, with its pixel
    statistics given (``stats``, rows of ``pixel_stats``) and a calibration holding them, below a pixel
    threshold (all False without a calibration)."""
    nearest_cos = np.asarray(nearest_cos, dtype=np.float64)
    if not gate:
        return np.zeros(nearest_cos.shape, dtype=bool)
    off = nearest_cos < gate["threshold"]
    if stats is not None:
        off = off | _pixel_fail(stats, gate).any(1)
    return off


def reason(nearest_cos: float, gate: dict, stats: np.ndarray | None = None) -> str:
    """Why the picture was found unreadable: the signals below their thresholds, with their values."""
    said = []
    if stats is not None:
        st, px = np.asarray(stats, dtype=np.float64).reshape(-1), gate.get("pixel") or {}
        sd_low, corr_low = _pixel_fail(st, gate)[0]
        if sd_low:
            said.append(f"its intensity sd is {st[0]:.1f}, below {px['sd_threshold']:.1f} (half the lowest "
                        "training picture's: a constant picture)")
        if corr_low:
            said.append(f"its neighbouring pixels correlate {st[1]:.2f}, below {px['corr_threshold']:.2f} (half the "
                        "lowest training picture's: pixel noise)")
    if nearest_cos < gate["threshold"] or not said:
        said.append(f"its nearest training picture has cosine {nearest_cos:.3f}, below the gate's "
                    f"{gate['threshold']:.3f} (two training pictures drawn at random: median "
                    f"{gate['pair_median']:.3f}; each training picture's nearest other: lowest {gate['loo_min']:.3f})")
    return f"{REASON}: " + "; ".join(said) + "; a blank, constant or noise picture, or one unlike any training picture"
