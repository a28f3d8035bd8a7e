"""Plain-text reports and Open-i XML reports (loose and inside a .tgz), ingested into a real store."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import pytest

from medweave.ingest import ingest
from medweave.store.catalog import Store

OPENI = """<?xml version="1.0" encoding="utf-8"?>
<eCitation>
   <meta type="rr"/>
   <uId id="{rid}"/>
   <pmcId id="{n}"/>
   <MedlineCitation Owner="Indiana University">
      <Article PubModel="Electronic">
         <Abstract>
            <AbstractText Label="COMPARISON">None.</AbstractText>
            <AbstractText Label="INDICATION">XXXX-year-old with cough. Seen by Dr. Smithers.</AbstractText>
            <AbstractText Label="FINDINGS">{findings}</AbstractText>
            <AbstractText Label="IMPRESSION">{impression}</AbstractText>
         </Abstract>
      </Article>
   </MedlineCitation>
   <MeSH>{mesh}</MeSH>
   <parentImage id="{rid}_1_IM-0001-3001"><caption>Xray Chest PA and Lateral</caption></parentImage>
   <parentImage id="{rid}_1_IM-0001-4001"><caption>Xray Chest PA and Lateral</caption></parentImage>
</eCitation>
"""


def _openi(n: int, normal: bool) -> bytes:
    mesh = "<major>normal</major>" if normal else \
        "<major>Opacity/lung/base/left</major><automatic>Pneumonia</automatic>"
    findings = "The lungs are clear." if normal else "Left basilar opacity."
    impression = "No acute disease." if normal else "Left lower lobe pneumonia."
    return OPENI.format(rid=f"CXR{n}", n=n, mesh=mesh, findings=findings, impression=impression).encode()


def _tgz(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store", write=True) as s:
        yield s


def test_text_reports_still_ingest(tmp_path, store, text_files):
    text_files(tmp_path / "notes", 6, patients=3)
    report = ingest([tmp_path / "notes"], store, progress=False)
    assert report.items_per_adapter == {"text": 6}
    assert store.items()["patient_id"].nunique() == 3


def test_a_loose_openi_report_becomes_one_scrubbed_text_item(tmp_path, store):
    path = tmp_path / "12.xml"
    path.write_bytes(_openi(12, normal=False))
    report = ingest([path], store, progress=False)
    assert report.errors == [] and report.items_per_adapter == {"openi": 1}
    (row,) = store.items().itertuples()
    assert row.modality == "text" and row.format == "openi"
    assert row.text.startswith("INDICATION: ") and "\nFINDINGS: Left basilar opacity." in row.text
    assert row.text.index("COMPARISON") < row.text.index("FINDINGS") < row.text.index("IMPRESSION")
    assert "Smithers" not in row.text and store.read_blob(row.blob).decode() == row.text
    labels, meta = json.loads(row.labels), json.loads(row.meta)
    assert labels == {"normal": 0, "mesh": ["Opacity/lung/base/left"]} and row.label == "abnormal"
    assert meta["sections"]["IMPRESSION"] == "Left lower lobe pneumonia."
    assert meta["mesh_automatic"] == ["Pneumonia"]
    assert meta["image_ids"] == ["1_IM-0001-3001", "1_IM-0001-4001"]
    # the report id is the patient: stored only as a pseudonym
    dump = str(store.con.execute("SELECT * FROM items").fetchall())
    assert "CXR12" not in dump and row.patient_id.startswith("P")
    assert store.studies()["description"].tolist() == ["Xray Chest PA and Lateral"]


def test_a_tgz_of_reports_gives_one_item_per_member_and_reports_a_bad_member(tmp_path, store):
    members = {f"reports/{n}.xml": _openi(n, normal=n % 2 == 0) for n in range(1, 7)}
    members["reports/bad.xml"] = b"<eCitation><uId id='CXR99'/>"
    members["reports/readme.txt"] = b"not a report"
    tgz = _tgz(tmp_path / "reports.tgz", members)
    report = ingest([tgz], store, progress=False)
    assert report.n_units == 7 and report.n_items_added == 6
    (path, reason), = report.errors
    assert path == str(tgz) and reason.startswith("member reports/bad.xml: not well-formed XML")
    df = store.items()
    assert sorted(json.loads(l)["normal"] for l in df["labels"]) == [0, 0, 0, 1, 1, 1]
    assert df["patient_id"].nunique() == 6
    again = ingest([tgz], store, progress=False)
    assert again.n_items_added == 0 and again.n_skipped == 6


def test_an_unreadable_tgz_is_one_error(tmp_path, store):
    tgz = tmp_path / "broken.tgz"
    tgz.write_bytes(_tgz(tmp_path / "ok.tgz", {"a/1.xml": _openi(1, True)}).read_bytes()[:40])
    report = ingest([tgz], store, progress=False, fmt="openi")
    (path, reason), = report.errors
    assert path == str(tgz) and "not a readable tar archive" in reason
    assert store.items().empty


@pytest.mark.slow
def test_iu_xray_reports_give_3955_text_items(shared_data, store):
    tgz = shared_data / "iu-xray-reports" / "NLMCXR_reports.tgz"
    if not tgz.is_file():
        pytest.skip(f"{tgz} not found")
    with tarfile.open(tgz) as tar:
        xml = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".xml")}
    normal = sum(bool(re.search(rb"<major>\s*normal\s*</major>", d, re.I)) for d in xml.values())
    report = ingest([tgz], store, progress=False)
    assert report.errors == [] and len(xml) == 3955 == report.n_items_added
    df = store.items()
    assert set(df["modality"]) == {"text"} and df["patient_id"].nunique() == 3955
    assert sum(json.loads(l)["normal"] for l in df["labels"]) == normal
    assert df["text"].str.contains("FINDINGS: ").sum() > 3000
