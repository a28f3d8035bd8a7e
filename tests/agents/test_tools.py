"""The tools' schemas (MCP input schemas and OpenAI function-calling tools) and the de-identified call log,
without a model: fast checks of what every agent sees first."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from medweave.agents.tools import TOOLS, Toolbox, ToolError, deidentify_arguments, openai_tools, parse_args


def test_openai_tools_are_valid_function_schemas():
    tools = openai_tools()
    assert [t["function"]["name"] for t in tools] == list(TOOLS)
    for t in tools:
        assert t["type"] == "function"
        fn = t["function"]
        assert len(fn["description"]) > 40 and fn["parameters"]["type"] == "object"
        assert fn["parameters"]["additionalProperties"] is False
        for name, prop in fn["parameters"]["properties"].items():
            assert prop.get("description"), f"{fn['name']}.{name} has no description"
    by = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    assert by["predict"]["required"] == ["case_id"]
    assert by["draft_report"]["properties"]["section"]["enum"] == ["report", "impression"]
    assert by["similar_cases"]["properties"]["k"]["maximum"] == 50


@pytest.mark.slow
def test_the_cli_prints_the_same_schemas():
    proc = subprocess.run([sys.executable, "-m", "medweave.cli", "mcp", "--openai-tools"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and json.loads(proc.stdout) == openai_tools()


def test_arguments_are_checked_strictly_and_errors_name_them():
    with pytest.raises(ToolError) as e:
        parse_args(TOOLS["similar_cases"], {"case_id": "P1", "k": "5"})  # a string is not a number
    assert e.value.argument == "k" and e.value.kind == "invalid_argument"
    with pytest.raises(ToolError) as e:
        parse_args(TOOLS["predict"], {})
    assert e.value.argument == "case_id" and "Field required" in e.value.message
    with pytest.raises(ToolError) as e:
        parse_args(TOOLS["draft_report"], {"case_id": "P1", "section": "summary"})
    assert e.value.argument == "section" and "'report' or 'impression'" in e.value.message


def test_the_log_holds_arguments_de_identified():
    logged = deidentify_arguments({"question": "Does Mr. John Smith (MRN 12345678, born 03/04/1950) have a mass?",
                                   "image_base64": "iVBORw0KGgo" * 10, "case_id": "P1a2b", "k": 3})
    assert "Smith" not in logged["question"] and "12345678" not in logged["question"] and "1950" not in logged["question"]
    assert logged["image_base64"].startswith("<picture: 110 base64 chars")
    assert logged["case_id"] == "P1a2b" and logged["k"] == 3


def test_a_toolbox_needs_a_store(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a medweave store"):
        Toolbox(store=tmp_path)
