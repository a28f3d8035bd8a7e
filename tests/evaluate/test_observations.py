"""The rule-based CheXpert-14 labeller: mentions, negation, uncertainty, No Finding, and its F1."""

from __future__ import annotations

import numpy as np
import pytest

from medweave.evaluate.observations import (OBSERVATIONS, f1_from_matrices, label, observation_f1,
                                            present_matrix)


@pytest.mark.parametrize("text,obs,want", [
    ("Small left pleural effusion.", "Pleural Effusion", 1),
    ("No pleural effusion or pneumothorax.", "Pleural Effusion", 0),
    ("No pleural effusion or pneumothorax.", "Pneumothorax", 0),
    ("No focal consolidation, pneumothorax, or pleural effusion identified.", "Pleural Effusion", 0),
    ("Left basilar opacity may represent atelectasis.", "Atelectasis", -1),
    ("Cannot exclude early pneumonia.", "Pneumonia", -1),
    ("The heart is mildly enlarged.", "Cardiomegaly", 1),
    ("Heart size is normal.", "Cardiomegaly", 0),
    ("Stable cardiomegaly.", "Cardiomegaly", 1),
    ("Pneumothorax has resolved.", "Pneumothorax", 0),
    ("Right internal jugular catheter tip in the SVC.", "Support Devices", 1),
    ("Healed left rib fracture.", "Fracture", 1),
    ("Lungs are clear. No edema.", "Edema", 0),
    ("Pulmonary vascular congestion.", "Edema", 1),
    ("Calcified granulomas from prior granulomatous infection.", "Pneumonia", None),
])
def test_mentions_negation_and_uncertainty(text, obs, want):
    assert label(text).get(obs) == want, label(text)


def test_positive_beats_negative_and_no_finding_rules():
    lab = label("No effusion on the left. Small right pleural effusion.")
    assert lab["Pleural Effusion"] == 1 and "No Finding" not in lab
    normal = label("Heart size normal. Lungs are clear. No pneumothorax or effusion.")
    assert normal["No Finding"] == 1 and normal["Cardiomegaly"] == 0
    # support devices alone do not make a report abnormal (the CheXpert convention)
    dev = label("Pacemaker in place. Lungs are clear.")
    assert dev["No Finding"] == 1 and dev["Support Devices"] == 1
    # a more specific observation keeps the words: pneumothorax is not an effusion
    assert "Pleural Effusion" not in label("Small right pneumothorax.")


def test_observation_f1_counts_uncertain_as_present():
    refs = ["Cardiomegaly.", "No acute disease.", "Possible left lower lobe pneumonia."]
    perfect = observation_f1(refs, refs)
    assert perfect["obs_f1_rules_micro14"] == pytest.approx(1.0)
    wrong = observation_f1(["No acute disease."] * 3, refs)
    assert wrong["obs_f1_rules_micro14"] < 0.5
    y = present_matrix(refs)
    assert y.shape == (3, len(OBSERVATIONS)) and y[2, OBSERVATIONS.index("Pneumonia")] == 1
    with pytest.raises(ValueError, match="2 predictions but 3 references"):
        observation_f1(refs[:2], refs)


def test_f1_by_hand():
    ref = np.zeros((4, 14), dtype=np.int8)
    pred = np.zeros((4, 14), dtype=np.int8)
    ref[:2, 2] = 1  # Cardiomegaly in reports 0, 1
    pred[1:3, 2] = 1  # predicted in 1, 2: tp 1, fp 1, fn 1
    assert f1_from_matrices(pred, ref)["obs_f1_rules_micro14"] == pytest.approx(0.5)
    assert f1_from_matrices(pred, ref)["obs_f1_rules_macro14"] == pytest.approx(0.5)
