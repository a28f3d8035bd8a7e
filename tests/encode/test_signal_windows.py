"""signal-stats on recordings longer than a few minutes (sleep studies, Holter): windowed, with the
window policy written on the encoder."""

from __future__ import annotations

import numpy as np

from medweave.encode.loaders import Signal
from medweave.encode.signal import STATS_WINDOWS, SignalStats, windows


def test_short_leads_are_read_whole_and_long_ones_in_windows():
    assert windows(100 * 60, 100.0) == [slice(0, 6000)]
    parts = windows(100 * 3600 * 8, 100.0)  # 8 hours at 100 Hz
    assert len(parts) == STATS_WINDOWS and parts[0].start == 0 and parts[-1].stop == 100 * 3600 * 8
    assert "windows" in SignalStats.window_policy


def test_a_long_many_channel_recording_encodes_with_finite_values():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(20, 256 * 3600)).astype(np.float32)  # 20 channels, 1 hour at 256 Hz
    data[3, 1000:5000] = np.nan  # a gap
    vec = SignalStats().encode([Signal(data=data, rate=256.0)])
    assert vec.shape == (1, SignalStats.dim) and np.isfinite(vec).all()
