"""Column meaning and content rules of table de-identification."""

from __future__ import annotations

import pytest

from medweave.store.deid_table import date_layout, identifier_by_content, identifier_by_name, name_words


@pytest.mark.parametrize("column", ["Username", "CCNumber", "MothersMaiden", "TelephoneNumber", "EmailAddress",
                                    "NationalID", "patient_name", "FirstName", "zip_code", "dateofbirth", "DOB",
                                    "StreetAddress", "ssn", "MRN", "ip_address", "Birthday", "emailaddress"])
def test_identifier_names(column):
    assert identifier_by_name(column) is not None, name_words(column)


@pytest.mark.parametrize("column", ["drug_name", "labname", "NameSet", "test_name", "Gender", "BloodType",
                                    "Kilograms", "hadm_id", "labresult", "Occupation", "State", "age"])
def test_ordinary_names(column):
    assert identifier_by_name(column) is None, name_words(column)


def test_content_rules():
    assert identifier_by_content(["a.b@example.org", "c@d.io"]) == "e-mail addresses"
    assert identifier_by_content(["4111 1111 1111 1111", "5500-0000-0000-0004"]) == "card numbers"
    assert identifier_by_content(["4111 1111 1111 1112"]) != "card numbers"  # fails the Luhn check
    assert identifier_by_content(["+1 (217) 555-0100", "217-555-0199"]) == "phone numbers"
    assert identifier_by_content(["SMITH^JOHN", "DOE^JANE"]) == "person names"
    assert identifier_by_content(["cough", "fever", "cough"]) is None
    assert identifier_by_content(["00006494300", "00093505001"]) is None  # drug codes stay


@pytest.mark.parametrize("values, name", [
    (["2020-01-31", "2020-02-03 14:30:00"], "ISO 8601"), (["13-01-2019", "02-03-2019"], "dd-mm-yyyy"),
    (["01/13/2019", "03/02/2019"], "mm/dd/yyyy"), (["13.01.2019"], "dd.mm.yyyy"), (["20190113"], "yyyymmdd"),
    (["3 Mar 2012", "14 April 2013"], "d Mon yyyy"), (["Mar 3, 2012"], "Mon d, yyyy"),
])
def test_date_layouts(values, name):
    assert date_layout(values).name == name


def test_not_dates():
    assert date_layout(["12", "13"]) is None and date_layout(["2020-01-31", "soon"]) is None
