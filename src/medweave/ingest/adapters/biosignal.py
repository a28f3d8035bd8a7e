"""Biosignals beside WFDB: EDF, EDF+ and BDF (the formats of EEG and sleep studies), read with
``pyedflib`` (EDFlib's maintained Python binding), and WAV signals read with SciPy.

Each file becomes one SIGNAL item whose blob is a deterministic ``.npz`` (see the WFDB adapter):
``signal`` holds the channels at the file's main sampling rate (the rate most channels share), in
physical units; channels at other rates go to ``signal_1``, ``signal_2``, ... (meta ``groups`` says
which channels and rate each holds). EDF+ annotations (the TAL channel) become ``ann_onset`` and
``ann_duration`` (seconds), ``ann_sample`` (at the main rate) and ``ann_text`` (scrubbed).

De-identification: an EDF header carries the patient's code, name, birth date and sex, and the
recording's administration code, technician and equipment. None of these texts is stored: the
patient code (when present) is the raw patient key, pseudonymised like any other; the birth date
only gives the age at the start of the recording; sex goes to the patient; the start time is
shifted per patient. Annotation texts are scrubbed of the header's names and codes. The blob holds
arrays only, never the header.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ...store.catalog import Item, Modality
from ..base import Adapter, IngestContext, IngestError, Unit, quoted
from .report import patient_key, patient_rule_text
from .wfdb import deterministic_npz

_EDF_ANONYMOUS = {"", "x", "xx", "unknown", "anonymous", "anon", "n/a"}


def edf_kind(head: bytes) -> str | None:
    """``bdf`` or ``edf`` by the header's first bytes (and EDF+ by its reserved field), else None."""
    if len(head) < 256:
        return None
    if head[:8] == b"\xffBIOSEMI":
        return "bdf"
    if head[:8] == b"0       " and head[168:170].isdigit():
        return "edf"
    return None


def _birth(value: Any) -> dt.date | None:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    text = str(value or "").strip()
    for fmt in ("%d %b %Y", "%d-%b-%Y", "%d.%m.%Y", "%Y-%m-%d"):
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    return None


def _name_words(*texts: str) -> list[str]:
    out = []
    for t in texts:
        t = str(t or "").strip()
        if t.lower() in _EDF_ANONYMOUS:
            continue
        out.append(t)
        out += [w for w in re.split(r"[\s_,^.]+", t) if len(w) >= 2 and w.lower() not in _EDF_ANONYMOUS]
    return out


class EdfAdapter(Adapter):
    """EDF, EDF+ (with annotations) and BDF files, one SIGNAL item each (see the module docstring).
    The patient is the header's patient code, else the file-name prefix (option ``patient_from``)."""

    name = "edf"
    version = "1"
    option_names = ("patient_from",)
    extensions = (".edf", ".bdf", ".rec")
    description = "EDF / EDF+ / BDF biosignals (EEG, sleep studies), read with pyedflib; header de-identified"

    def sniff(self, path: Path, head: bytes) -> float:
        if edf_kind(head):
            return 0.95
        return 0.5 if path.suffix.lower() in (".edf", ".bdf") else 0.0

    def patient_rule(self, options: dict) -> str:
        return "by the EDF header's patient code where it has one, else " + patient_rule_text(options)

    def read(self, unit: Unit, ctx: IngestContext) -> Iterator[Item]:
        try:
            import pyedflib
        except ImportError as exc:  # an optional dependency
            raise IngestError("reading EDF needs the pyedflib package (pip install pyedflib)") from exc
        try:
            reader = pyedflib.EdfReader(str(unit.path))
        except Exception as exc:
            raise IngestError(f"not a readable EDF/BDF file ({quoted(exc)})") from None
        try:
            header = reader.getHeader()
            n = reader.signals_in_file
            if n == 0:
                raise IngestError("the EDF header describes no signals; expected at least one channel")
            labels = [str(x).strip() for x in reader.getSignalLabels()]
            rates = [float(r) for r in reader.getSampleFrequencies()]
            units = [str(h.get("dimension", "")).strip() for h in reader.getSignalHeaders()]
            channels = [reader.readSignal(i).astype(np.float32) for i in range(n)]
            onsets, durations, texts = reader.readAnnotations()
            duration = float(reader.getFileDuration())
            file_type = {0: "EDF", 1: "EDF+C", 2: "EDF+D", 3: "BDF", 4: "BDF+C", 5: "BDF+D"}.get(
                getattr(reader, "filetype", -1), "EDF")
        except IngestError:
            raise
        except Exception as exc:
            raise IngestError(f"EDF signal data unreadable ({quoted(exc)})") from None
        finally:
            reader.close()
        code = str(header.get("patientcode") or "").strip()
        raw_pid = code if code.lower() not in _EDF_ANONYMOUS else \
            patient_key(unit.path, ctx.options.get("patient_from", "prefix"))
        pid = ctx.patient(raw_pid)
        known = _name_words(header.get("patientname"), code, header.get("admincode"), header.get("technician"),
                            header.get("patient_additional"), header.get("recording_additional"), raw_pid)
        start = header.get("startdate")
        birth = _birth(header.get("birthdate"))
        age = None
        if birth and isinstance(start, dt.datetime):
            age = round((start.date() - birth).days / 365.25, 2)
        sex = {"male": "M", "female": "F"}.get(str(header.get("sex") or header.get("gender") or "").lower())
        main_rate = max(Counter(rates).items(), key=lambda kv: (kv[1], kv[0]))[0]
        groups: list[dict[str, Any]] = []
        arrays: dict[str, np.ndarray] = {}
        for k, rate in enumerate([main_rate] + sorted(set(rates) - {main_rate})):
            idx = [i for i, r in enumerate(rates) if r == rate]
            length = min(len(channels[i]) for i in idx)
            key = "signal" if k == 0 else f"signal_{k}"
            arrays[key] = np.stack([channels[i][:length] for i in idx])
            groups.append({"key": key, "rate": rate, "channels": [labels[i] for i in idx], "n_samples": int(length)})
        if len(onsets):
            clean = [ctx.scrub(str(t), known) for t in texts]
            arrays.update({"ann_onset": np.asarray(onsets, dtype=np.float64),
                           "ann_duration": np.asarray(durations, dtype=np.float64),
                           "ann_sample": np.round(np.asarray(onsets) * main_rate).astype(np.int64),
                           "ann_text": np.array(clean, dtype=str)})
        shifted = ctx.shift(pid, start) if isinstance(start, dt.datetime) else None
        fields: dict[str, Any] = {"format": "edf", "sampling_rate": main_rate, "n_channels": n,
                                  "n_samples": int(arrays["signal"].shape[1]), "channel_names": ",".join(labels)}
        if age is not None and 0 <= age <= 120:
            fields["age"] = age
        if shifted:
            fields["time"] = shifted
        meta: dict[str, Any] = {"file_type": file_type, "duration_s": duration, "units": units,
                                "channels": [{"name": lab, "rate": r, "unit": u} for lab, r, u in zip(labels, rates, units)],
                                "groups": groups}
        if len(onsets):
            meta["annotations"] = {"count": int(len(onsets)),
                                   "texts": dict(Counter(arrays["ann_text"].tolist()).most_common(20))}
        yield Item(
            patient_id=pid, study_id=ctx.study(pid, unit.path.stem), modality=Modality.SIGNAL,
            blob=deterministic_npz(arrays), blob_ext=".npz", fields=fields, meta=meta,
            patient_attrs={"namespace": ctx.namespace, "sex": sex},
            study_attrs={"date": shifted.date() if shifted else None,
                         "description": f"{file_type} recording, {n} channels"},
        )


class WavAdapter(Adapter):
    """WAV signals (PhysioNet ships some: heart sounds, respiration): one SIGNAL item with the file's
    sampling rate and its channels as stored (PCM values as float32; meta ``dtype`` says which).
    The patient is the file-name prefix (option ``patient_from``)."""

    name = "wav"
    version = "1"
    option_names = ("patient_from",)
    extensions = (".wav",)
    description = "WAV signals (heart and lung sounds, any channel count), read with SciPy"

    def sniff(self, path: Path, head: bytes) -> float:
        if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
            return 0.9
        return 0.3 if path.suffix.lower() == ".wav" else 0.0

    def patient_rule(self, options: dict) -> str:
        return patient_rule_text(options)

    def read(self, unit: Unit, ctx: IngestContext) -> Iterator[Item]:
        from scipy.io import wavfile

        try:
            rate, data = wavfile.read(str(unit.path))
        except Exception as exc:
            raise IngestError(f"not a readable WAV file ({quoted(exc)})") from None
        data = np.asarray(data)
        if data.ndim == 1:
            data = data[:, None]
        if data.size == 0:
            raise IngestError("the WAV file holds no samples")
        signal = np.ascontiguousarray(data.T.astype(np.float32))
        stem = unit.path.stem
        pid = ctx.patient(patient_key(unit.path, ctx.options.get("patient_from", "prefix")))
        yield Item(
            patient_id=pid, study_id=ctx.study(pid, stem), modality=Modality.SIGNAL,
            blob=deterministic_npz({"signal": signal}), blob_ext=".npz",
            fields={"format": "wav", "sampling_rate": float(rate), "n_channels": int(signal.shape[0]),
                    "n_samples": int(signal.shape[1]),
                    "channel_names": ",".join(f"ch{i + 1}" for i in range(signal.shape[0]))},
            meta={"dtype": str(data.dtype), "duration_s": signal.shape[1] / float(rate)},
            patient_attrs={"namespace": ctx.namespace},
        )
