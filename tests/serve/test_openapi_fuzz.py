"""Property-based tests of the whole OpenAPI surface (schemathesis) against a real ``medweave serve`` on a
loopback port, holding the phantom store, its fusion model and a VQA model: no 500, every error JSON in
the server's shape with a clear message and no trace, every response conforming to the document
(status codes, content types, headers, bodies), schema-valid requests accepted and invalid ones
refused.

``MEDWEAVE_SCHEMATHESIS_EXAMPLES`` sets the examples per operation (default 8, to keep the suite
short; the README gives a longer run). ``/api/transcribe`` is left out: each generated body would run
Whisper (seconds of CPU each); its errors are tested in ``test_server.py``. Four operations take
content the schema cannot describe (picture bytes, a conversation holding a picture): for them a
schema-valid request may be refused with 400/415 and a message saying why, so the check that
schema-valid requests are accepted is not applied there; every other check is.
"""

from __future__ import annotations

import os
import shutil

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis not installed (pip install -e '.[test]')")
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st  # noqa: E402  (hypothesis comes with schemathesis)
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

from medweave.serve.testing import start_server, stop_server  # noqa: E402

EXAMPLES = int(os.environ.get("MEDWEAVE_SCHEMATHESIS_EXAMPLES", "8"))
CONTENT_DEPENDENT = {"POST /api/similar", "POST /api/upload", "POST /api/ask", "POST /v1/chat/completions"}


@pytest.fixture(scope="module")
def api_schema(phantom_model, tiny_vqa_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("openapi-fuzz")
    store = root / "store"
    shutil.copytree(phantom_model.parent.parent / "store", store)  # uploads are ingested into it
    proc, url = start_server(store, phantom_model, ["--vqa-model", str(tiny_vqa_model), "--max-upload-mb", "1"],
                             log=root / "server.log", timeout=400)
    try:
        import httpx

        cases = [c["case_id"] for c in httpx.get(url + "/api/cases", params={"limit": 20}).json()["cases"]]
        detail = [httpx.get(f"{url}/api/cases/{c}").json() for c in cases[:10]]
        known = {"case_id": cases, "item_id": [i["item_id"] for d in detail for i in d["images"] + d["signals"]]}
        yield schemathesis.openapi.from_url(url + "/openapi.json").exclude(path="/api/transcribe"), known
    finally:
        stop_server(proc)


def check_error_shape(response) -> None:
    """Every answer of 400 or more is ``{"error": {"message", "type", "code"}}`` with a message, no trace."""
    if response.status_code < 400:
        return
    ctype = {k.lower(): v for k, v in response.headers.items()}.get("content-type", "")
    ctype = ctype[0] if isinstance(ctype, list) else ctype  # schemathesis keeps each header's values in a list
    assert ctype.startswith("application/json"), response.headers
    err = response.json()["error"]
    assert isinstance(err["message"], str) and err["message"].strip(), response.text
    assert err["code"] == response.status_code and isinstance(err["type"], str), response.text
    assert "Traceback" not in response.text and 'File "' not in response.text, response.text


def check_case(case) -> int:
    response = case.call(timeout=120)
    label = f"{case.method.upper()} {case.path}"
    excluded = [positive_data_acceptance] if label in CONTENT_DEPENDENT else []
    case.validate_response(response, excluded_checks=excluded)
    assert response.status_code < 500 or response.status_code == 503, response.text
    check_error_shape(response)
    return response.status_code


def test_every_operation_conforms(api_schema):
    """Each operation gets EXAMPLES generated requests (hypothesis, shrunk on failure), half of them with
    the path's case or item id (and predict's case_id) replaced by one that exists; all failures are
    listed at the end, and the status counts seen are printed."""
    api_schema, known = api_schema
    assert known["case_id"] and known["item_id"]
    failures, seen = [], {}
    operations = [r.ok() for r in api_schema.get_all_operations()]
    assert len(operations) >= 14, [op.label for op in operations]
    for op in operations:
        statuses = seen.setdefault(op.label, {})

        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                  derandomize=True, phases=(Phase.explicit, Phase.generate))  # no shrinking: a bounded run
        @given(case=op.as_strategy(), pick=st.integers(0, 10**6), real=st.booleans())
        def run(case, pick, real):
            if real:  # half the requests name a case or item that exists, so the route's work runs
                for name in ("case_id", "item_id"):
                    if name in (case.path_parameters or {}):
                        case.path_parameters[name] = known[name][pick % len(known[name])]
                if case.path.endswith("/explain"):  # occlusion only: integrated gradients take seconds of CPU
                    case.query = {**(case.query or {}), "fast": "1"}
                if isinstance(case.body, dict) and "case_id" in case.body:
                    case.body["case_id"] = known["case_id"][pick % len(known["case_id"])]
            status = check_case(case)
            statuses[status] = statuses.get(status, 0) + 1

        try:
            run()
        except Exception as exc:  # noqa: BLE001  gathered, reported together below
            parts = [exc, *getattr(exc, "exceptions", ())]  # hypothesis groups what it saw
            failures.append(f"{op.label}: " + " | ".join(f"{type(e).__name__}: {str(e)[:1500]}" for e in parts))
    for label, statuses in seen.items():
        print(f"{label}: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}")
    assert not failures, "\n\n".join(failures)
