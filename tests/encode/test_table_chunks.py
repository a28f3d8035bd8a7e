"""Tabular features read chunk by chunk of cases give the frame that one read of every table item
gives: the same most frequent codes (ties included), the same columns, means and last values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medweave.cohort import build_cohort
from medweave.encode import TabularFeaturizer, tabular_frame
from medweave.ingest import ingest
from medweave.store import Store


@pytest.fixture(scope="module")
def mimic(tmp_path_factory, shared_data):
    """The MIMIC-III demo (100 patients, 1,332 table codes, numeric and text values): real data with
    many ties among code counts."""
    root = tmp_path_factory.mktemp("mimic-table")
    with Store(root / "store", write=True) as st:
        assert ingest([shared_data / "ehr-demo" / "mimic-iii-demo"], st, fmt="csv",
                      options={"mapping": "mimic-iii-demo"}, progress=False).ok
    st = Store(root / "store")
    yield st, build_cohort(st)
    st.close()


@pytest.mark.parametrize("max_codes", [10, 64])
def test_table_frame_chunk_by_chunk_equals_one_read(mimic, max_codes):
    st, cohort = mimic
    whole = tabular_frame(cohort, st, max_codes=max_codes, chunk_cases=10**6)
    assert whole.shape == (100, max_codes)
    if max_codes == 64:  # numeric codes (means) and text codes (last value) both present
        kinds = whole.dtypes.astype(str).value_counts()
        assert kinds["float64"] > 0 and kinds["object"] > 0
    for chunk in (1, 7, 33):
        got = tabular_frame(cohort, st, max_codes=max_codes, chunk_cases=chunk)
        pd.testing.assert_frame_equal(whole, got)
    f = TabularFeaturizer().fit(whole)
    x1, p1 = f.transform(whole)
    x2, p2 = TabularFeaturizer().fit(got).transform(got)
    assert np.array_equal(x1, x2, equal_nan=True) and np.array_equal(p1, p2)



def test_no_codes_wanted_gives_the_covariates_alone(mimic):
    st, cohort = mimic
    frame = tabular_frame(cohort, st, covariates=[], max_codes=0, chunk_cases=7)
    assert frame.shape == (len(cohort), 0)


def test_a_category_read_as_integer_or_float_is_one_category():
    """A column of whole numbers with a missing value is floats ("2.0"), one without is integers ("2"):
    a cohort of one split can hold as integers what the whole cohort held as floats. The categories
    fitted on one spelling take the other; strings and unknown values are matched as written."""
    fitted = TabularFeaturizer().fit(pd.DataFrame({"grade": pd.Series(["a", "b", 2.0, None, "a", "b"], dtype=object)}))
    assert fitted.categorical["grade"] == ["2.0", "a", "b"]
    x_int, present = fitted.transform(pd.DataFrame({"grade": pd.Series([2, 3, 2], dtype="int64")}))
    x_obj, _ = fitted.transform(pd.DataFrame({"grade": pd.Series([2.0, 3.0, "a"], dtype=object)}))
    assert present.all()
    assert x_int.tolist() == [[1, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]]
    assert x_obj.tolist() == [[1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]]
