"""Frozen encoders, registered by name, each with a version, an output size and its preprocessing.

An encoder turns loaded item contents (see ``loaders``) into fixed-size float32 vectors. Its
``version`` is part of the embedding-cache key: change the preprocessing or the weights, bump the
version, and the cache re-encodes. New encoders plug in by name, or through the Python entry-point
group ``medweave.encoders``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..registry import Registry


class Encoder:
    """Base class: set ``name``, ``version``, ``modalities``, ``dim``; implement ``encode``."""

    name: str = ""
    version: str = "1"
    modalities: tuple[str, ...] = ()
    dim: int = 0
    batch_size: int = 32

    def encode(self, inputs: Sequence[Any]) -> np.ndarray:
        """Encode a batch of loaded inputs into an array of shape (len(inputs), dim), float32."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "dim": self.dim, "modalities": list(self.modalities)}


ENCODERS: Registry[type[Encoder]] = Registry("encoder", "medweave.encoders")
for _name, _path in {
    "efficientnet-lite0": "medweave.encode.image:EfficientNetLite0",
    "efficientnet-lite0-volume": "medweave.encode.image:EfficientNetLite0Volume",
    "efficientnet-lite0-320": "medweave.encode.image:EfficientNetLite0At320",
    "efficientnet-lite0-native": "medweave.encode.image:EfficientNetLite0Native",
    "e5-small": "medweave.encode.text:E5Small",
    "e5-small-query": "medweave.encode.text:E5SmallQuery",
    "signal-stats": "medweave.encode.signal:SignalStats",
    "signal-waveform": "medweave.encode.signal:SignalWaveform",
}.items():
    ENCODERS.register(_name, _path)

# The encoder each modality uses unless a config says otherwise.
DEFAULT_ENCODERS = {
    "image": "efficientnet-lite0",
    "volume": "efficientnet-lite0-volume",
    "text": "e5-small",
    "qa": "e5-small",
    "signal": "signal-stats",
}


def array_hash(arr: np.ndarray) -> str:
    """sha256 over an array's shape, dtype and bytes (the cache key of in-memory pictures)."""
    import hashlib

    a = np.ascontiguousarray(arr)
    return hashlib.sha256(str(a.shape).encode() + str(a.dtype).encode() + a.tobytes()).hexdigest()


def get_encoder(name: "str | Encoder") -> Encoder:
    """The registered encoder of that name, or ``name`` itself when it is already an encoder (one
    built from saved weights, such as a model folder's fine-tuned ``FineTunedLite0``)."""
    return name if isinstance(name, Encoder) else ENCODERS.get(name)()
