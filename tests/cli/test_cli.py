"""The medweave command, run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "medweave.cli"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


def test_help_lists_subcommands_and_each_has_an_example():
    top = run("--help")
    assert top.returncode == 0
    for sub in ("ingest", "listen", "store", "cohort", "demo", "formats", "train", "evaluate", "vqa", "retrieve",
                "explain", "report", "serve", "draft", "eval", "mcp", "agent"):
        assert sub in top.stdout
    for sub in (["ingest"], ["listen"], ["store", "stats"], ["cohort", "build"], ["cohort", "show"], ["demo"], ["formats"],
                ["train"], ["evaluate"], ["vqa", "train"], ["vqa", "evaluate"], ["vqa", "ask"], ["vqa", "probe"],
                ["retrieve"], ["explain"], ["report"], ["serve"], ["draft", "fit"], ["draft", "impression"],
                ["draft", "score"], ["eval", "tasks"], ["eval", "run"], ["eval", "compare"], ["eval", "report"], ["mcp"], ["agent"]):
        h = run(*sub, "--help")
        assert h.returncode == 0, h.stderr
        assert any(f"{w}: medweave {sub[0]}" in h.stdout for w in ("Example", "Examples")), sub


# Modules that cost seconds to import (torch alone takes 2-10 s here): none may load for `--help`.
HEAVY = ("torch", "transformers", "sklearn", "scipy", "numpy", "pandas", "pyarrow", "duckdb", "fastapi", "uvicorn",
         "faster_whisper", "captum", "faiss", "matplotlib", "pydicom", "nibabel", "wfdb", "PIL", "pycocoevalcap",
         "ray")

HELP_EVERY_COMMAND = """
import json, sys
from typer.main import get_command
from typer.testing import CliRunner
from medweave.cli import app

def walk(cmd, path):
    yield path
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        yield from walk(sub, [*path, name])

runner, paths = CliRunner(), list(walk(get_command(app), []))
for path in paths:
    res = runner.invoke(app, [*path, "--help"])
    assert res.exit_code == 0 and "Usage:" in res.output, (path, res.output)
print(json.dumps({"commands": [" ".join(p) for p in paths],
                  "loaded": sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[1:]))}))
"""


def test_help_of_every_command_imports_no_heavy_module():
    """`medweave ... --help` stays quick: the CLI imports a command's machinery only when it runs."""
    res = subprocess.run([sys.executable, "-c", HELP_EVERY_COMMAND, *HEAVY], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert {"ingest", "store stats", "vqa ask", "draft fit", "eval run", "serve"} <= set(got["commands"])
    assert got["loaded"] == [], f"--help imported {got['loaded']}"


def test_lazy_package_exports_resolve_to_their_modules():
    import medweave.explain
    import medweave.vqa
    from medweave.explain import ExplainError
    from medweave.explain.context import ExplainError as direct

    assert ExplainError is direct and "modality_shapley" in dir(medweave.explain)
    assert medweave.vqa.normalize.normalize_answer is medweave.vqa.normalize_answer
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        medweave.vqa.nope  # noqa: B018


def test_ingest_exit_code_report_and_stats(tmp_path, text_files):
    text_files(tmp_path / "in", 6)
    (tmp_path / "in" / "mystery.xyz").write_bytes(b"\x00\x01garbage")
    res = run("ingest", str(tmp_path / "in"), "--store", str(tmp_path / "s"), "--json")
    assert res.returncode == 0, "an unknown file met in a folder is skipped (not a data file), not a failure"
    report = json.loads(res.stdout)
    assert report["items_added"] == 6 and report["failed"] == 0 and report["skipped"] == 1
    assert report["units"] == 7 == report["ingested"] + report["skipped"] + report["failed"] + report["already_stored"]
    assert "mystery.xyz" in report["skipped_files"][0]["source"]
    named = run("ingest", str(tmp_path / "in" / "mystery.xyz"), "--store", str(tmp_path / "s"), "--json")
    assert named.returncode == 1, "a file the user names that nothing reads is a failure"
    report = json.loads(named.stdout)
    assert report["failed"] == 1 and "unknown file format" in report["errors"][0]["reason"]
    stats = json.loads(run("store", "stats", "--store", str(tmp_path / "s"), "--json").stdout)
    assert stats["items_per_modality"] == {"text": 6} and stats["patients"] == 6
    assert any("mystery.xyz" in e["source_path"] for e in stats["errors"])
    ok = run("ingest", str(tmp_path / "in" / "pt0000_r00000.txt"), "--store", str(tmp_path / "s"))
    assert ok.returncode == 0 and "1 already stored" in ok.stdout


def test_cohort_build_and_show(tmp_path, text_files):
    text_files(tmp_path / "in", 8, patients=4)
    assert run("ingest", str(tmp_path / "in"), "--store", str(tmp_path / "s"), "--quiet").returncode == 0
    res = run("cohort", "build", "--store", str(tmp_path / "s"), "--out", str(tmp_path / "c.parquet"), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["cases"] == 4
    shown = json.loads(run("cohort", "show", str(tmp_path / "c.parquet"), "--json").stdout)
    assert shown["present"] == {"text": 4}
    bad = run("cohort", "build", "--store", str(tmp_path / "s"), "--out", str(tmp_path / "d.parquet"),
              "--target", "nonexistent")
    assert bad.returncode == 2 and "nonexistent" in bad.stderr


@pytest.mark.parametrize("args,needle", [
    (["ingest", "x", "--store", "s", "--format", "dicomm"], "allowed values"),
    (["store", "stats", "--store", "/nonexistent/store"], "no medweave store here"),
])
def test_bad_arguments_give_clear_errors(tmp_path, args, needle):
    res = subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert res.returncode == 2
    assert needle in res.stderr
    assert not (tmp_path / "s").exists(), "a rejected command must not leave a store behind"
