"""A synthetic multimodal cohort ("phantom") written as real files in real formats.

``generate_phantom(out_dir, n_patients, seed)`` draws a ground truth per patient (a binary target
``disease`` with about 35 % prevalence, a second label ``cardiomegaly``, two latent factors, age and
sex), renders every modality from it and writes::

    OUT/README.txt                  says plainly that all of it is synthetic
    OUT/manifest.json               the ground truth, the true effects, the missingness (PhantomManifest)
    OUT/mappings/tables.toml        the mapping the CSV adapter needs (which column is what)
    OUT/data/images/<PID>_<study>.dcm     chest-radiograph-like CR images (DICOM, MONOCHROME2)
    OUT/data/reports/<PID>_<study>.txt    radiology reports consistent with the images
    OUT/data/tables/demographics.csv      wide: one row per patient, with the labels
    OUT/data/tables/labs.csv              long: patient, time, code, value, unit
    OUT/data/tables/vitals.csv            long: patient, time, code, value, unit
    OUT/data/signals/<PID>.hea/.dat       3-lead ECG-like WFDB records (record name = patient)

``OUT/data`` is what to ingest. Every effect of the target on a modality is a documented number
(``TRUE_EFFECTS``), and so is the missingness (``MISSINGNESS``): later stages (fusion, explanation,
missing-modality handling) can be checked against them. The same seed gives byte-identical files.
Identifiers (names, birth dates, record numbers) are invented, to give de-identification work.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PHANTOM_VERSION = "3"
IMAGE_SIZE = 128
PIXEL_SPACING_MM = 2.8
ECG_FS = 250
ECG_SECONDS = 10
ECG_LEADS = ("I", "II", "V2")
BASE_DATE = dt.date(2021, 1, 1)

# --- the truth model -----------------------------------------------------------------------------
# disease ~ Bernoulli(sigmoid(b0 + b_inflammation * z_inflammation + b_age * (age - 62)))
# cardiomegaly ~ Bernoulli(sigmoid(c0 + c_cardiac * z_cardiac + c_age * (age - 62)))
TRUTH_MODEL: dict[str, Any] = {
    "age": {"distribution": "normal", "mean": 62.0, "sd": 14.0, "min": 18, "max": 95},
    "sex": {"p_female": 0.5},
    "latent": {"inflammation": "standard normal", "cardiac": "standard normal"},
    "disease": {"b0": -0.9, "b_inflammation": 1.6, "b_age_per_year": 0.02, "target_prevalence": 0.35},
    "cardiomegaly": {"c0": -1.7, "c_cardiac": 1.3, "c_age_per_year": 0.03},
    "severity": "sigmoid(z_inflammation); only drawn into the data where disease = 1",
    "follow_up": {"p_second_study": 0.2, "days_after": [3, 60], "finding_strength_factor": 0.7},
}

# Lab and vital values: base + delta * disease + beta * z_inflammation + sd * noise, rounded, clipped.
# (unit, base, delta, beta, sd, decimals, lo, hi)
LABS: dict[str, tuple[str, float, float, float, float, int, float, float]] = {
    "WBC": ("10^9/L", 7.0, 0.7, 0.3, 1.8, 1, 1.0, 40.0),
    "CRP": ("mg/L", 6.0, 6.0, 2.0, 15.0, 0, 0.5, 400.0),
    "LACTATE": ("mmol/L", 1.2, 0.2, 0.05, 0.5, 1, 0.3, 12.0),
    "SODIUM": ("mmol/L", 139.0, 0.0, 0.0, 3.0, 0, 120.0, 155.0),  # a null feature: no effect at all
}
VITALS: dict[str, tuple[str, float, float, float, float, int, float, float]] = {
    "HR": ("/min", 74.0, 3.0, 1.0, 9.0, 0, 40.0, 180.0),
    "SPO2": ("%", 97.5, -0.5, -0.2, 1.5, 0, 70.0, 100.0),
    "TEMP": ("Cel", 36.8, 0.15, 0.05, 0.4, 1, 35.0, 41.5),
}
REPEAT_MEASUREMENT_P = 0.3  # a second measurement of a code, 4-24 h later, within-patient sd / 3

TRUE_EFFECTS: dict[str, Any] = {
    "image": {
        "disease": "a bright round opacity (Gaussian blob) in one lung zone",
        "opacity_radius_mm": "(0.05 + 0.06 * severity) * 64 px * 2.8 mm",
        "opacity_peak_intensity": "300 * (0.4 + 0.6 * severity) stored values (12-bit image)",
        "cardiomegaly": "heart shadow half-width 0.34 instead of 0.24 (image half-width = 1)",
        "ap_view": "AP view magnifies the heart by 1.1 (a real-world confounder: AP is more common "
                   "when disease = 1, see missingness.view_ap)",
        "follow_up": "the finding is drawn at 0.7 of its strength on a follow-up study",
        "occult_rate_if_disease": 0.35,
        "occult": "for this share of diseased patients the opacity is not drawn at all (radiographically "
                  "occult, as early pneumonia often is): their studies have no finding (PatientTruth.occult) "
                  "and their reports read as a normal study (a miss), so neither picture nor report can "
                  "find them; labs, vitals and ECG still can",
    },
    "text": {
        "disease": "opacity/consolidation sentence with size and location; impression of pneumonia",
        "hedged_rate_if_disease": 0.2,
        "distractor_rate_if_healthy": 0.15,
        "hedged": "positive report worded uncertainly ('cannot exclude early consolidation')",
        "distractor": "healthy report mentioning a benign finding (atelectasis, granuloma)",
        "cardiomegaly": "'the cardiac silhouette is enlarged' vs 'heart size is normal'",
    },
    "table": {
        "formula": "value = base + delta * disease + beta * z_inflammation + sd * N(0, 1)",
        "labs": {k: dict(zip(("unit", "base", "delta", "beta", "sd"), v[:5])) for k, v in LABS.items()},
        "vitals": {k: dict(zip(("unit", "base", "delta", "beta", "sd"), v[:5])) for k, v in VITALS.items()},
        "null_features": ["SODIUM"],
    },
    "signal": {
        "heart_rate_bpm": "72 + 7 * disease + 3 * z_inflammation + 8 * N(0, 1), clipped to [45, 150]",
        "st_offset_mV": "-0.04 * disease + 0.04 * N(0, 1) on leads II and V2 (ST depression)",
        "r_amplitude_factor": "1.4 if cardiomegaly else 1.0 (voltage criterion)",
    },
}

# P(modality present | disease). Equal rates mean MCAR; different rates mean MNAR (missingness that
# depends on the target, which a model never sees at prediction time).
MISSINGNESS: dict[str, Any] = {
    "image": {"mechanism": "MCAR", "unit": "study", "p_present": {"0": 0.95, "1": 0.95}},
    "text": {"mechanism": "MNAR", "unit": "study", "p_present": {"0": 0.6, "1": 0.95},
             "why": "healthy patients' studies are reported less often"},
    "signal": {"mechanism": "MNAR", "unit": "patient", "p_present": {"0": 0.4, "1": 0.85},
               "why": "sicker patients are more likely to get an ECG"},
    "labs": {
        "WBC": {"mechanism": "MNAR", "p_present": {"0": 0.9, "1": 0.6}},
        "CRP": {"mechanism": "MNAR", "p_present": {"0": 0.9, "1": 0.6}},
        "SODIUM": {"mechanism": "MNAR", "p_present": {"0": 0.9, "1": 0.6}},
        "LACTATE": {"mechanism": "MNAR", "p_present": {"0": 0.35, "1": 0.75},
                    "why": "lactate is ordered when sepsis is suspected"},
        "unit": "patient x code",
        "why": "sicker patients are sent on before the routine panel is drawn",
    },
    "vitals": {code: {"mechanism": "MCAR", "p_present": {"0": 0.92, "1": 0.92}} for code in VITALS},
    "demographics": {"mechanism": "none", "p_present": {"0": 1.0, "1": 1.0}},
    "view_ap": {"mechanism": "confounder", "p_ap": {"0": 0.1, "1": 0.45},
                "why": "portable AP films are taken of sicker patients"},
}

FIRST_F = ("Jane", "Mary", "Anna", "Laura", "Emma", "Sofia", "Clara", "Julia", "Nina", "Rosa", "Ida", "Eva")
FIRST_M = ("John", "Peter", "Paul", "Mark", "David", "Lucas", "Omar", "Henry", "Felix", "Tom", "Ivan", "Leo")
LAST = ("Doe", "Roe", "Smith", "Miller", "Novak", "Garcia", "Keller", "Brown", "Moreau", "Rossi",
        "Jensen", "Kowalski", "Nakamura", "Okafor", "Lindqvist", "Haddad")
PHYSICIANS = ("Dr. Alan Grant", "Dr. Ellie Sattler", "Dr. Ian Malcolm", "Dr. Ruth Hale", "Dr. Sam Osei")


@dataclass
class StudyTruth:
    study: str  # "s1", "s2"
    date: str
    view: str  # "PA" | "AP"
    image: bool
    report: bool
    finding: dict[str, Any] | None  # where and how strong the opacity is drawn (None: no finding)
    report_wording: str | None  # positive | hedged | negative | distractor (None: no report)


@dataclass
class PatientTruth:
    patient_id: str
    disease: int
    cardiomegaly: int
    age: int
    sex: str
    latent: dict[str, float]
    severity: float
    name: str  # synthetic, there to be scrubbed
    birth_date: str
    admit_date: str
    studies: list[StudyTruth]
    ecg: dict[str, float] | None  # heart rate, ST offset, R factor (None: no ECG written)
    labs: dict[str, int]  # code -> number of rows written (absent codes left out)
    vitals: dict[str, int]
    occult: bool = False  # diseased, but nothing drawn on the pictures (TRUE_EFFECTS.image.occult)

    @property
    def modalities(self) -> dict[str, int]:
        """How many files/rows of each kind were written for this patient."""
        return {
            "image": sum(s.image for s in self.studies),
            "text": sum(s.report for s in self.studies),
            "signal": int(self.ecg is not None),
            "labs": sum(self.labs.values()),
            "vitals": sum(self.vitals.values()),
            "demographics": 1,
        }


@dataclass
class PhantomManifest:
    """What was written and the truth behind it. ``manifest.json`` holds the same, with paths
    relative to ``root`` (so the whole folder is identical for a seed wherever it lives)."""

    seed: int
    n_patients: int
    root: Path
    folders: dict[str, str]  # kind -> folder relative to root ("data" is the one to ingest)
    mapping_files: dict[str, str]  # adapter option -> file relative to root
    table_files: dict[str, str]
    patients: list[PatientTruth]
    truth_model: dict[str, Any]
    effects: dict[str, Any]
    missingness: dict[str, Any]
    observed: dict[str, Any]  # realised rates and counts
    version: str = PHANTOM_VERSION
    image_size: int = IMAGE_SIZE  # pictures' side in pixels (findings' *_px fields are at this size)

    def path(self, kind: str) -> Path:
        """Absolute path of a folder (``data``, ``images``, ...), a table or a mapping file."""
        for table in (self.folders, self.table_files, self.mapping_files):
            if kind in table:
                return self.root / table[kind]
        raise KeyError(f"unknown phantom path {kind!r}; known: "
                       f"{', '.join([*self.folders, *self.table_files, *self.mapping_files])}")

    @property
    def mapping(self) -> Path:
        """The mapping file to pass as ``options={"mapping": ...}`` when ingesting ``data``."""
        return self.path("mapping")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("root")
        if self.image_size == IMAGE_SIZE:  # the default size leaves manifest.json as it always was
            d.pop("image_size")
        for p, truth in zip(d["patients"], self.patients):
            p["modalities"] = truth.modalities
        return d

    def save(self) -> Path:
        path = self.root / "manifest.json"
        path.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "PhantomManifest":
        """Read ``manifest.json`` (or the folder holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / "manifest.json"
        d = json.loads(path.read_text(encoding="utf-8"))
        patients = []
        for p in d.pop("patients"):
            p.pop("modalities", None)
            p["studies"] = [StudyTruth(**s) for s in p["studies"]]
            patients.append(PatientTruth(**p))
        return cls(root=path.parent, patients=patients, **d)


# --- drawing the truth ---------------------------------------------------------------------------

def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))


def _by_class(rates: dict[str, float], disease: np.ndarray) -> np.ndarray:
    return np.where(disease == 1, rates["1"], rates["0"])


def _draw_truth(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    m = TRUTH_MODEL
    age = np.clip(np.rint(rng.normal(m["age"]["mean"], m["age"]["sd"], n)), m["age"]["min"], m["age"]["max"])
    female = rng.random(n) < m["sex"]["p_female"]
    z_inf = rng.standard_normal(n)
    z_card = rng.standard_normal(n)
    d, c = m["disease"], m["cardiomegaly"]
    disease = (rng.random(n) < _sigmoid(d["b0"] + d["b_inflammation"] * z_inf + d["b_age_per_year"] * (age - 62))).astype(int)
    cardio = (rng.random(n) < _sigmoid(c["c0"] + c["c_cardiac"] * z_card + c["c_age_per_year"] * (age - 62))).astype(int)
    admit = rng.integers(0, 730, n)
    return {
        "age": age.astype(int), "female": female, "z_inf": z_inf, "z_card": z_card,
        "disease": disease, "cardio": cardio, "severity": _sigmoid(z_inf),
        "admit_day": admit, "birth_extra_days": rng.integers(0, 365, n),
        "second_study": rng.random(n) < m["follow_up"]["p_second_study"],
        "follow_up_days": rng.integers(*m["follow_up"]["days_after"], n),
        "first": rng.integers(0, 12, n), "last": rng.integers(0, len(LAST), n),
    }


# --- images --------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(Y, X) picture coordinates in -1..1 for a size x size picture: Y -1 top (head) .. 1 bottom
    (feet), X -1 image left (patient's right in PA) .. 1."""
    g = np.mgrid[0:size, 0:size].astype(np.float32)
    return (g[0] + 0.5) / (size / 2) - 1.0, (g[1] + 0.5) / (size / 2) - 1.0


def pixel_spacing_mm(size: int = IMAGE_SIZE) -> float:
    """The pixel spacing of a size x size phantom picture: the same body (2.8 mm at 128 px), so a
    smaller picture has coarser pixels and every finding keeps its size in cm."""
    return PIXEL_SPACING_MM if size == IMAGE_SIZE else PIXEL_SPACING_MM * IMAGE_SIZE / size


def _soft_ellipse(cx: float, cy: float, ax: float, ay: float, edge: float = 0.04,
                  size: int = IMAGE_SIZE) -> np.ndarray:
    _Y, _X = _grid(size)
    r = np.sqrt(((_X - cx) / ax) ** 2 + ((_Y - cy) / ay) ** 2)
    return _sigmoid((1.0 - r) / edge).astype(np.float32)


def _finding_geometry(rng: np.random.Generator, severity: float, size: int = IMAGE_SIZE) -> dict[str, Any]:
    side = "right" if rng.random() < 0.5 else "left"
    zone = "lower" if rng.random() < 0.65 else "upper"
    cx = (-0.4 if side == "right" else 0.4) + rng.uniform(-0.06, 0.06)
    cy = (0.18 if zone == "lower" else -0.3) + rng.uniform(-0.06, 0.06)
    radius = 0.05 + 0.06 * severity
    px = size / 2
    return {
        "side": side, "zone": zone, "severity": round(float(severity), 4),
        "center_xy_px": [round((cx + 1) * px - 0.5, 2), round((cy + 1) * px - 0.5, 2)],
        "radius_px": round(radius * px, 2),
        "diameter_cm": round(2 * radius * (IMAGE_SIZE / 2) * PIXEL_SPACING_MM / 10, 1),  # the same at every size
        "peak_intensity": round(300 * (0.4 + 0.6 * severity), 1),
    }


def _render_chest(rng: np.random.Generator, cardio: int, view: str, finding: dict[str, Any] | None,
                  strength: float, size: int = IMAGE_SIZE) -> np.ndarray:
    _Y, _X = _grid(size)
    j = rng.uniform(-1, 1, 6) * np.array([0.03, 0.03, 0.04, 0.04, 0.02, 0.08])
    img = np.full((size, size), 120.0, np.float32)  # air outside the body
    img += 1350.0 * _soft_ellipse(0.0 + j[0], 0.12 + j[1], 0.86 + j[2], 1.08, edge=0.03, size=size)
    lungs = np.maximum(_soft_ellipse(-0.38 + j[0], -0.04 + j[1], 0.27 + j[3], 0.55 + j[4], size=size),
                       _soft_ellipse(0.38 + j[0], -0.04 + j[1], 0.27 + j[3], 0.55 + j[4], size=size))
    img -= 800.0 * lungs
    # ribs: faint arcs across each lung field
    for k in range(8):
        y0 = -0.55 + 0.14 * k + j[1]
        ax = np.abs(_X - j[0])
        arc = y0 - 0.35 * ax + 0.9 * ax**2
        img += 170.0 * lungs * np.exp(-((_Y - arc) / 0.022) ** 2)
    mediastinum = _sigmoid((0.12 - np.abs(_X - j[0])) / 0.02) * _sigmoid((0.25 - _Y) / 0.05)
    img += 700.0 * mediastinum * lungs
    heart_w = (0.34 if cardio else 0.24) * (1.1 if view == "AP" else 1.0) * (1 + j[5] / 4)
    img = np.maximum(img, 1450.0 * _soft_ellipse(0.1 + j[0], 0.3 + j[1], heart_w, 0.22, edge=0.05, size=size))
    if finding is not None:
        cx, cy = (np.array(finding["center_xy_px"]) + 0.5) / (size / 2) - 1.0
        sigma = finding["radius_px"] / (size / 2) / 1.5
        img += strength * finding["peak_intensity"] * np.exp(-((_X - cx) ** 2 + (_Y - cy) ** 2) / (2 * sigma**2))
    img = img * rng.uniform(0.92, 1.08) + rng.normal(0.0, 35.0, img.shape)
    return np.clip(np.rint(img), 0, 4095).astype(np.uint16)


def _dicom_uid(seed: int, *parts: str) -> str:
    """A deterministic ``2.25.<128-bit integer>`` UID (pydicom's generate_uid is random for 2.25)."""
    key = "\x1f".join(["medweave-phantom", str(seed), *parts]).encode()
    return "2.25." + str(int.from_bytes(hashlib.sha256(key).digest()[:16], "big"))


def _write_dicom(path: Path, pixels: np.ndarray, seed: int, p: PatientTruth, s: StudyTruth, accession: str,
                 spacing_mm: float = PIXEL_SPACING_MM) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    sop_class = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
    sop_uid = _dicom_uid(seed, p.patient_id, s.study, "instance")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    date = s.date.replace("-", "")
    first, last = p.name.split(" ")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "093000"
    ds.AccessionNumber = accession
    ds.Modality = "CR"
    ds.Manufacturer = "medweave phantom (synthetic)"
    ds.InstitutionName = "Phantom General Hospital"
    ds.ReferringPhysicianName = "Grant^Alan"
    ds.StudyDescription = f"CHEST {s.view}"
    ds.SeriesDescription = f"CHEST {s.view}"
    ds.PatientName = f"{last}^{first}"
    ds.PatientID = p.patient_id
    ds.PatientBirthDate = p.birth_date.replace("-", "")
    ds.PatientSex = p.sex
    ds.PatientAge = f"{p.age:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = s.view
    ds.StudyInstanceUID = _dicom_uid(seed, p.patient_id, s.study, "study")
    ds.SeriesInstanceUID = _dicom_uid(seed, p.patient_id, s.study, "series")
    ds.StudyID = s.study
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"] if s.view == "PA" else ["R", "F"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelSpacing = [spacing_mm, spacing_mm]
    ds.ImagerPixelSpacing = [spacing_mm, spacing_mm]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = 1000
    ds.WindowWidth = 2000
    ds.BurnedInAnnotation = "NO"
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


# --- reports -------------------------------------------------------------------------------------

def _report(rng: np.random.Generator, p: PatientTruth, s: StudyTruth, accession: str, strength: float) -> str:
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    f = s.finding
    lines = [
        f"Patient: {p.name}    DOB: {p.birth_date}    MRN: {p.patient_id}",
        f"Exam: CR CHEST {s.view}    Date: {s.date}    Accession: {accession}",
        f"Referring: {pick(PHYSICIANS)}",
        "",
        f"EXAMINATION: Chest radiograph, {'portable AP' if s.view == 'AP' else 'PA'} view.",
        "",
        "FINDINGS:",
    ]
    findings: list[str] = []
    if s.report_wording == "positive" and f is not None:
        size = round(f["diameter_cm"] * strength, 1)
        findings.append(pick((
            f"There is a {size} cm rounded opacity in the {f['side']} {f['zone']} lobe.",
            f"A {size} cm focal opacity is seen in the {f['side']} {f['zone']} zone, compatible with consolidation.",
            f"Patchy consolidation measuring about {size} cm in the {f['side']} {f['zone']} lobe.",
        )))
        impression = pick((f"{f['side'].capitalize()} {f['zone']} lobe pneumonia.",
                           "Findings consistent with pneumonia.",
                           f"Focal consolidation in the {f['side']} {f['zone']} lobe."))
    elif s.report_wording == "hedged" and f is not None:
        findings.append(f"Subtle hazy density in the {f['side']} {f['zone']} zone; cannot exclude early consolidation.")
        impression = "Possible early pneumonia. Clinical correlation recommended."
    else:
        findings.append(pick(("Lungs are clear.", "The lungs are well expanded and clear.",
                              "No focal consolidation.")))
        if s.report_wording == "distractor":
            findings.append(pick(("Minimal bibasilar atelectasis.", "Small calcified granuloma in the left upper lobe.")))
        impression = pick(("No acute cardiopulmonary process.", "No evidence of pneumonia."))
    findings.append(pick(("The cardiac silhouette is enlarged.", "Cardiomegaly.")) if p.cardiomegaly
                    else pick(("Heart size is normal.", "Cardiomediastinal silhouette within normal limits.")))
    if rng.random() < 0.7:
        findings.append(pick(("No pleural effusion or pneumothorax.", "No pneumothorax.",
                              "No pleural effusion.")))
    if p.cardiomegaly:
        impression += " Cardiomegaly."
    lines += [" ".join(findings), "", "IMPRESSION:", impression, "",
              f"Electronically signed by: {pick(PHYSICIANS)[4:]} on {s.date}", ""]
    return "\n".join(lines)


# --- ECG -----------------------------------------------------------------------------------------

# Waves of one beat: (name, time from R in s, width sd in s, amplitude per lead I, II, V2 in mV)
_WAVES = (
    ("P", -0.17, 0.022, (0.08, 0.15, 0.08)),
    ("Q", -0.03, 0.010, (-0.05, -0.10, -0.02)),
    ("R", 0.0, 0.011, (0.6, 1.1, 0.5)),
    ("S", 0.03, 0.011, (-0.12, -0.25, -0.9)),
    ("T", 0.30, 0.055, (0.18, 0.32, 0.35)),
)
_ST_LEADS = np.array([0.0, 1.0, 1.0])


def _ecg(rng: np.random.Generator, hr: float, st: float, r_factor: float) -> np.ndarray:
    t = np.arange(ECG_FS * ECG_SECONDS) / ECG_FS
    rr = 60.0 / hr * (1 + 0.03 * rng.standard_normal(int(ECG_SECONDS * hr / 60) + 3))
    beats = rng.uniform(0.05, 0.5) + np.concatenate([[0.0], np.cumsum(rr)])
    qt = np.sqrt(60.0 / hr)  # Bazett-like stretch of the T wave timing
    dtb = t[None, :] - beats[:, None]  # (beats, samples)
    sig = np.zeros((len(t), len(ECG_LEADS)))
    for name, mu, sd, amps in _WAVES:
        mu = mu * qt if name == "T" else mu
        wave = np.exp(-0.5 * ((dtb - mu) / sd) ** 2).sum(axis=0)
        gain = r_factor if name in ("R", "S") else 1.0
        sig += wave[:, None] * (np.array(amps) * gain)[None, :]
    st_window = (_sigmoid((dtb - 0.06) / 0.008) - _sigmoid((dtb - 0.3 * qt) / 0.02)).sum(axis=0)
    sig += st * st_window[:, None] * _ST_LEADS[None, :]
    sig += 0.05 * np.sin(2 * np.pi * 0.3 * t + rng.uniform(0, 2 * np.pi))[:, None]
    sig += rng.normal(0.0, 0.015, sig.shape)
    return np.round(sig, 3)


# --- writing -------------------------------------------------------------------------------------

def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def _toml(doc: dict[str, dict[str, Any]], header: str) -> str:
    """A TOML document of tables of scalars and lists (all the mapping needs)."""
    out = [f"# {line}" for line in header.splitlines()]
    for table, body in doc.items():
        out += ["", f'[files."{table}"]']
        out += [f"{k} = {_toml_value(v)}" for k, v in body.items()]
    return "\n".join(out) + "\n"


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def _measurements(rng: np.random.Generator, specs: dict[str, tuple], missing: dict[str, Any],
                  t: dict[str, np.ndarray], pids: list[str], admits: list[dt.datetime]
                  ) -> tuple[list[list[Any]], list[dict[str, int]]]:
    """Long-form rows (patient, time, code, value, unit) for every code present, and per-patient
    counts. Drawn per code for all patients at once."""
    n = len(pids)
    counts: list[dict[str, int]] = [{} for _ in range(n)]
    rows: list[tuple[str, dt.datetime, int, list[Any]]] = []
    for ci, (code, (unit, base, delta, beta, sd, dec, lo, hi)) in enumerate(specs.items()):
        present = rng.random(n) < _by_class(missing[code]["p_present"], t["disease"])
        mean = base + delta * t["disease"] + beta * t["z_inf"] + sd * rng.standard_normal(n)
        repeat = rng.random(n) < REPEAT_MEASUREMENT_P
        hours = rng.uniform(0.5, 4.0, n), rng.uniform(4.0, 24.0, n)
        values = mean, mean + sd / 3 * rng.standard_normal(n)
        for k in range(2):
            vals = np.clip(np.round(values[k], dec), lo, hi)
            for i in np.flatnonzero(present & (repeat if k else True)):
                when = admits[i] + dt.timedelta(minutes=int(hours[k][i] * 60))
                value = f"{vals[i]:.{dec}f}"
                rows.append((pids[i], when, ci, [pids[i], when.isoformat(sep=" "), code, value, unit]))
                counts[i][code] = counts[i].get(code, 0) + 1
    rows.sort(key=lambda r: r[:3])
    return [r[3] for r in rows], counts


def _readme(n: int, seed: int) -> str:
    return f"""SYNTHETIC DATA - NOT REAL PATIENTS

Everything in this folder was generated by medweave's phantom cohort generator
(medweave.demo.phantom.generate_phantom, seed={seed}, {n} patients). No part of it comes from a
real person: the images are drawn shapes, the reports are filled-in templates, the lab values,
vital signs and ECG traces are random numbers, and the names, birth dates and record numbers are
invented so that de-identification has something to remove.

data/        what to ingest (images/ DICOM, reports/ text, tables/ CSV, signals/ WFDB)
mappings/    the TOML mapping the CSV adapter reads (options={{"mapping": "mappings/tables.toml"}})
manifest.json  the ground truth: per-patient labels, the true effect of every modality, and the
               missingness mechanism and rates; later checks compare models against it.

Do not use it to draw any medical conclusion.
"""


def generate_phantom(out_dir: str | Path, n_patients: int = 300, seed: int = 0,
                     image_size: int = IMAGE_SIZE) -> PhantomManifest:
    """Write a synthetic multimodal cohort into ``out_dir`` (see the module docstring) and return its
    manifest. Deterministic for ``seed``; prints nothing. ``image_size``: the pictures' side in pixels
    (default 128); the same patients, findings (in cm) and reports at any size, only the pictures'
    resolution differs (``pixel_spacing_mm``). Smaller pictures make scale runs cheap to encode.
    """
    if n_patients < 1:
        raise ValueError(f"n_patients must be at least 1, got {n_patients}")
    if not 16 <= image_size <= 1024:
        raise ValueError(f"image_size must be 16..1024 pixels, got {image_size}")
    root = Path(out_dir)
    folders = {"data": "data", "images": "data/images", "reports": "data/reports",
               "tables": "data/tables", "signals": "data/signals", "mappings": "mappings"}
    for rel in folders.values():
        (root / rel).mkdir(parents=True, exist_ok=True)
    streams = np.random.SeedSequence([seed, 0x6D77]).spawn(7)
    r_truth, r_miss, r_img, r_text, r_tab, r_ecg, r_occult = (np.random.default_rng(s) for s in streams)

    n = n_patients
    t = _draw_truth(r_truth, n)
    d = t["disease"]
    # presence, drawn for everyone at once (second-study draws are ignored where there is none)
    img_present = r_miss.random((n, 2)) < _by_class(MISSINGNESS["image"]["p_present"], d)[:, None]
    rep_present = r_miss.random((n, 2)) < _by_class(MISSINGNESS["text"]["p_present"], d)[:, None]
    ecg_present = r_miss.random(n) < _by_class(MISSINGNESS["signal"]["p_present"], d)
    view_ap = r_miss.random((n, 2)) < _by_class(MISSINGNESS["view_ap"]["p_ap"], d)[:, None]
    noise_u = r_text.random((n, 2))
    hedged = noise_u < TRUE_EFFECTS["text"]["hedged_rate_if_disease"]
    distractor = noise_u < TRUE_EFFECTS["text"]["distractor_rate_if_healthy"]
    occult = (r_occult.random(n) < TRUE_EFFECTS["image"]["occult_rate_if_disease"]) & (d == 1)
    hr = np.clip(72 + 7 * d + 3 * t["z_inf"] + 8 * r_ecg.standard_normal(n), 45, 150)
    st = -0.04 * d + 0.04 * r_ecg.standard_normal(n)

    pids = [f"PH{i + 1:04d}" for i in range(n)]
    admits = [dt.datetime.combine(BASE_DATE + dt.timedelta(days=int(a)), dt.time(8, 0)) for a in t["admit_day"]]
    patients: list[PatientTruth] = []
    for i, pid in enumerate(pids):
        sex = "F" if t["female"][i] else "M"
        first = (FIRST_F if sex == "F" else FIRST_M)[t["first"][i]]
        admit = admits[i].date()
        birth = admit - dt.timedelta(days=int(t["age"][i]) * 365 + int(t["birth_extra_days"][i]))
        finding = _finding_geometry(r_img, t["severity"][i], image_size) if d[i] else None
        studies = []
        for k in range(2 if t["second_study"][i] else 1):
            date = admit + dt.timedelta(days=int(t["follow_up_days"][i]) if k else 0)
            wording = None
            if rep_present[i, k]:
                if d[i] and occult[i]:
                    wording = "negative"  # nothing to see on the picture: the report misses it too
                elif d[i]:
                    wording = "hedged" if hedged[i, k] else "positive"
                else:
                    wording = "distractor" if distractor[i, k] else "negative"
            study_finding = None
            if finding is not None:
                factor = TRUTH_MODEL["follow_up"]["finding_strength_factor"] if k else 1.0
                study_finding = None if occult[i] else {**finding, "strength": factor}
            studies.append(StudyTruth(
                study=f"s{k + 1}", date=date.isoformat(), view="AP" if view_ap[i, k] else "PA",
                image=bool(img_present[i, k]), report=bool(rep_present[i, k]),
                finding=study_finding, report_wording=wording))
        r_factor = 1.4 if t["cardio"][i] else 1.0
        patients.append(PatientTruth(
            patient_id=pid, disease=int(d[i]), cardiomegaly=int(t["cardio"][i]), age=int(t["age"][i]),
            sex=sex, latent={"inflammation": round(float(t["z_inf"][i]), 4),
                             "cardiac": round(float(t["z_card"][i]), 4)},
            severity=round(float(t["severity"][i]), 4), name=f"{first} {LAST[t['last'][i]]}",
            birth_date=birth.isoformat(), admit_date=admit.isoformat(), studies=studies,
            ecg={"heart_rate_bpm": round(float(hr[i]), 2), "st_offset_mV": round(float(st[i]), 4),
                 "r_amplitude_factor": r_factor} if ecg_present[i] else None,
            labs={}, vitals={}, occult=bool(occult[i])))

    # images and reports
    for p in patients:
        for s in p.studies:
            accession = f"ACC{seed % 1000:03d}{p.patient_id[2:]}{s.study[1:]}"
            strength = s.finding["strength"] if s.finding else 0.0
            if s.image:
                pixels = _render_chest(r_img, p.cardiomegaly, s.view, s.finding, strength, image_size)
                _write_dicom(root / folders["images"] / f"{p.patient_id}_{s.study}.dcm", pixels, seed, p, s, accession,
                             pixel_spacing_mm(image_size))
            if s.report:
                text = _report(r_text, p, s, accession, strength)
                (root / folders["reports"] / f"{p.patient_id}_{s.study}.txt").write_text(text, encoding="utf-8")

    # ECG records
    import wfdb

    for i, p in enumerate(patients):
        if p.ecg is None:
            continue
        sig = _ecg(r_ecg, p.ecg["heart_rate_bpm"], p.ecg["st_offset_mV"], p.ecg["r_amplitude_factor"])
        wfdb.wrsamp(p.patient_id, fs=ECG_FS, units=["mV"] * len(ECG_LEADS), sig_name=list(ECG_LEADS),
                    p_signal=sig, fmt=["16"] * len(ECG_LEADS), adc_gain=[1000.0] * len(ECG_LEADS),
                    baseline=[0] * len(ECG_LEADS), base_date=admits[i].date(), base_time=dt.time(9, 15),
                    comments=[f"patient: {p.patient_id}", f"age: {p.age}", f"sex: {p.sex}",
                              "synthetic: medweave phantom"],
                    write_dir=str(root / folders["signals"]))

    # tables
    tables = {"demographics": "data/tables/demographics.csv", "labs": "data/tables/labs.csv",
              "vitals": "data/tables/vitals.csv"}
    _write_csv(root / tables["demographics"],
               ["patient_id", "name", "birth_date", "admit_date", "age", "sex", "disease", "cardiomegaly"],
               [[p.patient_id, p.name, p.birth_date, p.admit_date, p.age, p.sex, p.disease, p.cardiomegaly]
                for p in patients])
    for kind, specs in (("labs", LABS), ("vitals", VITALS)):
        rows, counts = _measurements(r_tab, specs, MISSINGNESS[kind], t, pids, admits)
        _write_csv(root / tables[kind], ["patient_id", "time", "code", "value", "unit"], rows)
        for p, c in zip(patients, counts):
            setattr(p, kind, c)

    mappings = {"mapping": "mappings/tables.toml"}
    (root / mappings["mapping"]).write_text(_mapping_toml(), encoding="utf-8")
    (root / "README.txt").write_text(_readme(n, seed), encoding="utf-8")

    manifest = PhantomManifest(
        seed=seed, n_patients=n, root=root, folders=folders, mapping_files=mappings, table_files=tables,
        patients=patients, truth_model=TRUTH_MODEL, effects=TRUE_EFFECTS, missingness=MISSINGNESS,
        observed=_observed(patients), image_size=image_size)
    manifest.save()
    return manifest


def _mapping_toml() -> str:
    """The mapping in the CSV adapter's format (medweave.ingest.adapters.table): one section per file."""
    long = {"form": "long", "patient": "patient_id", "time": "time", "code": "code", "value": "value",
            "unit": "unit"}
    doc = {
        "demographics": {"form": "wide", "patient": "patient_id", "time": "admit_date", "label": "disease",
                         "labels": ["cardiomegaly"], "age": "age", "sex": "sex", "birth_date": "birth_date",
                         "identifiers": ["name"]},
        "labs": long,
        "vitals": long,
    }
    return _toml(doc, "How the medweave CSV adapter reads the phantom's tables (synthetic data).\n"
                      "One section per table, keyed by its file name without .csv; every row becomes one item.\n"
                      "Dates (time, admit_date, birth_date) are shifted per patient; names are dropped.")


def _observed(patients: list[PatientTruth]) -> dict[str, Any]:
    """Realised counts and presence rates per class, to compare with the configured ones."""
    d = np.array([p.disease for p in patients])
    counts = {k: int(sum(p.modalities[k] for p in patients)) for k in patients[0].modalities}
    studies = [(p.disease, s) for p in patients for s in p.studies]
    sd = np.array([x for x, _ in studies])

    def rate(mask: np.ndarray, cls: np.ndarray) -> dict[str, float | None]:
        return {str(c): (round(float(mask[cls == c].mean()), 4) if (cls == c).any() else None) for c in (0, 1)}

    rates: dict[str, Any] = {
        "image": rate(np.array([s.image for _, s in studies]), sd),
        "text": rate(np.array([s.report for _, s in studies]), sd),
        "signal": rate(np.array([p.ecg is not None for p in patients]), d),
    }
    for code in [*LABS, *VITALS]:
        rates[code] = rate(np.array([code in p.labs or code in p.vitals for p in patients]), d)
    return {
        "prevalence": {"disease": round(float(d.mean()), 4),
                       "cardiomegaly": round(float(np.mean([p.cardiomegaly for p in patients])), 4)},
        "n_studies": len(studies),
        "files": {"image": counts["image"], "text": counts["text"], "signal": counts["signal"]},
        "table_rows": {"demographics": counts["demographics"], "labs": counts["labs"], "vitals": counts["vitals"]},
        "p_present": rates,
    }
