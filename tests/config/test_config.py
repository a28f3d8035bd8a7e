"""Configs are data: unknown keys, encoders, kinds fail with a message naming them and the allowed values."""

from __future__ import annotations

import pytest

from medweave.config import ConfigError, load_config, parse_config

BASE = {"data": {"paths": ["x"]}, "cohort": {"targets": ["y"]}, "model": {"modalities": ["image"]}}


def with_(**over):
    cfg = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    for section, value in over.items():
        cfg[section] = {**cfg.get(section, {}), **value} if isinstance(value, dict) else value
    return cfg


@pytest.mark.parametrize("raw,needles", [
    ({**BASE, "modle": {}}, ["unknown key 'modle'", "model", "cohort"]),
    (with_(train={"epoch": 3}), ["unknown key 'train.epoch'", "epochs", "patience"]),
    (with_(model={"kind": "mlp"}), ["model.kind", "'mlp'", "attention, concat, sequential"]),
    (with_(encoders={"image": "resnet50"}), ["'resnet50'", "efficientnet-lite0", "e5-small"]),
    (with_(data={"format": "dcm"}), ["'dcm'", "dicom", "image-folder"]),
    (with_(cohort={"case": "visit"}), ["cohort.case", "patient", "study"]),
    (with_(heads=[{"name": "z", "target": "zz"}]), ["'zz'", "cohort.targets"]),
])
def test_bad_configs_name_the_key_and_the_allowed_values(raw, needles):
    with pytest.raises(ConfigError) as err:
        parse_config(raw, "exp.toml")
    for n in needles:
        assert n in str(err.value), (n, str(err.value))
    assert str(err.value).startswith("exp.toml")


def test_toml_file_with_environment_expansion(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDWEAVE_DATA", "/somewhere/data")
    p = tmp_path / "c.toml"
    p.write_text('[data]\npaths = ["${MEDWEAVE_DATA}/nih"]\n[cohort]\ntargets = ["abnormal"]\n'
                 '[model]\nmodalities = ["table", "image"]\n')
    cfg = load_config(p)
    assert cfg.data.paths == ["/somewhere/data/nih"]
    assert [h.name for h in cfg.heads] == ["abnormal"] and cfg.model.kind == "sequential"
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml")


def test_shipped_configs_validate():
    from pathlib import Path

    for path in (Path(__file__).resolve().parents[2] / "configs").glob("*.toml"):
        load_config(path)
