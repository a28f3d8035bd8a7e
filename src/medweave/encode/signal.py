"""Signal encoders.

``signal-stats`` (frozen, 12 leads x 16 features = 192-d): per lead, robust statistics (mean, std,
min, max, 5/50/95th percentiles, mean absolute first difference, zero-crossing rate of the centred
signal) and the relative power in 7 frequency bands (0-1, 1-3, 3-8, 8-15, 15-30, 30-60, 60+ Hz) of its
Welch-free periodogram. Leads beyond 12 are dropped; missing leads are NaN-free zeros *with* a
per-lead presence feature folded into the statistics block (std = 0 and power = 0 mark them).

``signal-waveform`` (input of the learnable 1D CNN in the fusion model): each of up to 12 leads
resampled to 100 Hz and cut or padded to 10 s (1000 samples), z-scored per lead; flattened 12 x 1000.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .base import Encoder
from .loaders import Signal

MAX_LEADS = 12
# Long recordings (sleep studies, Holter, ICU waveforms: hours) are summarised over windows, not read whole.
STATS_WHOLE_SECONDS = 300.0  # up to this length a lead is summarised whole
STATS_WINDOW_SECONDS = 30.0
STATS_WINDOWS = 10  # evenly spaced windows, statistics averaged
BANDS = ((0, 1), (1, 3), (3, 8), (8, 15), (15, 30), (30, 60), (60, 1e9))
WAVE_RATE = 100.0
WAVE_SECONDS = 10.0


def _lead_stats(x: np.ndarray, rate: float) -> np.ndarray:
    x = np.nan_to_num(x.astype(np.float64))
    c = x - x.mean()
    pct = np.percentile(x, [5, 50, 95])
    zc = float(np.mean(np.abs(np.diff(np.signbit(c).astype(np.int8))))) if x.size > 1 else 0.0
    stats = [x.mean(), x.std(), x.min(), x.max(), *pct, float(np.mean(np.abs(np.diff(x)))) if x.size > 1 else 0.0, zc]
    spec = np.abs(np.fft.rfft(c)) ** 2
    freqs = np.fft.rfftfreq(x.size, d=1.0 / rate if rate > 0 else 1.0)
    total = spec.sum() or 1.0
    bands = [spec[(freqs >= lo) & (freqs < hi)].sum() / total for lo, hi in BANDS]
    return np.asarray(stats + bands, dtype=np.float32)


def windows(n: int, rate: float) -> list[slice]:
    """The parts of a lead of ``n`` samples that ``signal-stats`` reads: all of it up to
    ``STATS_WHOLE_SECONDS``, else ``STATS_WINDOWS`` evenly spaced windows of ``STATS_WINDOW_SECONDS``."""
    rate = rate if rate > 0 else 1.0
    if n <= STATS_WHOLE_SECONDS * rate:
        return [slice(0, n)]
    width = int(STATS_WINDOW_SECONDS * rate)
    starts = np.linspace(0, n - width, STATS_WINDOWS).astype(int)
    return [slice(int(a), int(a) + width) for a in starts]


class SignalStats(Encoder):
    name = "signal-stats"
    version = "2"
    modalities = ("signal",)
    dim = MAX_LEADS * (9 + len(BANDS))
    batch_size = 64
    window_policy = (f"whole lead up to {STATS_WHOLE_SECONDS:.0f} s; longer: {STATS_WINDOWS} evenly spaced "
                     f"{STATS_WINDOW_SECONDS:.0f} s windows, statistics averaged; first {MAX_LEADS} channels of "
                     "the main-rate group (EDF channels at other rates are not encoded); gaps (NaN) as 0")

    def encode(self, inputs: Sequence[Signal]) -> np.ndarray:
        per = 9 + len(BANDS)
        out = np.zeros((len(inputs), MAX_LEADS, per), dtype=np.float32)
        for i, sig in enumerate(inputs):
            for j, lead in enumerate(sig.data[:MAX_LEADS]):
                parts = windows(lead.size, sig.rate)
                out[i, j] = np.mean([_lead_stats(lead[w], sig.rate) for w in parts], axis=0)
        return out.reshape(len(inputs), -1)


def resample(x: np.ndarray, rate: float, new_rate: float, n_out: int) -> np.ndarray:
    """Linear-interpolation resampling to ``new_rate``, cut or zero-padded to ``n_out`` samples."""
    if rate <= 0:
        rate = new_rate
    t_new = np.arange(n_out) / new_rate
    t_old = np.arange(x.size) / rate
    y = np.interp(t_new, t_old, x, right=0.0)
    y[t_new > t_old[-1]] = 0.0
    return y


class SignalWaveform(Encoder):
    name = "signal-waveform"
    version = "1"
    modalities = ("signal",)
    window_policy = (f"the first {WAVE_SECONDS:.0f} s of the first {MAX_LEADS} channels of the main-rate group, "
                     f"resampled to {WAVE_RATE:.0f} Hz; gaps (NaN) as 0")
    n_samples = int(WAVE_RATE * WAVE_SECONDS)
    dim = MAX_LEADS * n_samples
    batch_size = 64

    def encode(self, inputs: Sequence[Signal]) -> np.ndarray:
        out = np.zeros((len(inputs), MAX_LEADS, self.n_samples), dtype=np.float32)
        for i, sig in enumerate(inputs):
            for j, lead in enumerate(sig.data[:MAX_LEADS]):
                y = resample(np.nan_to_num(lead.astype(np.float64)), sig.rate, WAVE_RATE, self.n_samples)
                out[i, j] = (y - y.mean()) / (y.std() + 1e-6)
        return out.reshape(len(inputs), -1)
