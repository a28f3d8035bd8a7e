"""``medweave draft``: fit an impression drafter, draft impressions (one text or a whole file), score a
drafted file, and draft reports from pictures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

draft_app = typer.Typer(help="Draft with sources: impressions from findings, reports from pictures.",
                        no_args_is_help=True, rich_markup_mode=None)
out = Console()
err = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False, markup=True)
    raise typer.Exit(code)


@draft_app.command("fit", epilog="Example: medweave draft fit --data ../shared/data/openi-summ --out runs/drafter")
def fit_command(
    data: Path = typer.Option(..., "--data", help="Folder with train.jsonl (and validate.jsonl to select on)."),
    out_dir: Path = typer.Option(..., "--out", help="Model folder to write."),
    method: List[str] = typer.Option([], "--method", help="Candidate method (repeatable; default: nearest, "
                                     "consensus, rerank); the best on validate is kept."),
    text_index: str = typer.Option("tfidf", "--index", help="Retrieval: tfidf, bm25, dense or hybrid."),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Build an impression drafter from the training reports, selected on the validate reports."""
    from .data import DraftDataError
    from .model import DEFAULT_METHODS, DraftModelError, fit_and_select, save_drafter

    try:
        drafter, info = fit_and_select(data, method or DEFAULT_METHODS, seed=seed, progress=not as_json,
                                       text_index=text_index)
        save_drafter(drafter, out_dir, info)
    except (DraftDataError, DraftModelError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    summary = {"model": str(out_dir), "method": drafter.name, **info}
    if as_json:
        out.print_json(json.dumps(summary, default=str))
    else:
        out.print(f"drafter {drafter.name} -> {out_dir} (selected on {info['selected_on']}: "
                  f"{json.dumps(info['methods'])})", highlight=False, markup=False)


@draft_app.command("impression", epilog=(
    "Example: medweave draft impression --model runs/drafter --findings \"Heart size normal. Small left "
    "pleural effusion.\"   or: --input test.jsonl --out drafted.jsonl"))
def impression_command(
    model: Path = typer.Option(..., "--model", help="Model folder from `medweave draft fit`."),
    findings: Optional[str] = typer.Option(None, "--findings", help="Findings text to draft an impression for."),
    input_file: Optional[Path] = typer.Option(None, "--input", help="JSON-lines file, each line with 'inputs'."),
    out_file: Optional[Path] = typer.Option(None, "--out", help="Where --input's drafted lines go."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Draft an impression (and the training reports it drew on) for findings text or a whole file."""
    from .data import DraftDataError
    from .model import DraftModelError, draft_file, load_drafter

    if (findings is None) == (input_file is None):
        _fail("give either --findings TEXT or --input FILE.jsonl (with --out OUT.jsonl)")
    if input_file is not None and out_file is None:
        _fail("--input needs --out OUT.jsonl (where the drafted lines are written)")
    if findings is not None and not findings.strip():
        _fail("--findings is empty: give the findings text")
    try:
        drafter, _ = load_drafter(model)
        if findings is not None:
            d = drafter.draft([findings.strip()])[0]
            res = {**d.to_dict(), "sources": [_with_text(drafter, s) for s in d.sources]}
            if as_json:
                out.print_json(json.dumps(res))
                return
            out.print(d.text, highlight=False, markup=False)
            out.print(f"({d.method}, {d.kind}) drawn on:", highlight=False, markup=False)
            for s in res["sources"]:
                extra = f" score {s['score']:.3f}" if "score" in s else ""
                out.print(f"  {s['id']} [{s['role']}]{extra}: {s.get('impression', '')}",
                          highlight=False, markup=False)
            return
        summary = draft_file(drafter, input_file, out_file, progress=not as_json)
    except (DraftDataError, DraftModelError, FileNotFoundError) as exc:
        _fail(str(exc))
    if as_json:
        out.print_json(json.dumps(summary))
    else:
        out.print(f"drafted {summary['drafted']} report(s) -> {summary['output']} "
                  f"({summary['seconds_per_report'] * 1000:.1f} ms per report); {summary['failed']} bad line(s)",
                  highlight=False, markup=False)
        for e in summary["errors"][:20]:
            out.print(f"  FAILED {e}", highlight=False, markup=False)
    raise typer.Exit(1 if summary["failed"] else 0)


def _with_text(drafter, source: dict) -> dict:
    """A source with the cited training report's findings and impression (when it is one)."""
    pos = drafter.kb.position.get(source["id"])
    if pos is None:
        return source
    e = drafter.kb.entries[pos]
    return {**source, "findings": e.text, "impression": e.fields.get("impression")}


@draft_app.command("score", epilog="Example: medweave draft score drafted.jsonl --json")
def score_command(
    path: Path = typer.Argument(..., help="JSON-lines file with 'prediction' and 'target' on each line."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the 95% intervals."),
    no_coco: bool = typer.Option(False, "--no-coco", help="Skip the COCO metrics (they need Java)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """ROUGE-1/2/L, BLEU, the COCO metrics, the observation F1 and the share of distinct drafts."""
    from ..evaluate.text import text_report

    if not path.is_file():
        _fail(f"{path}: no such file")
    preds, refs, bad = [], [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad.append(f"{path}:{n}: not valid JSON")
            continue
        p, t = rec.get("prediction"), rec.get("target")
        if not isinstance(p, str) or not isinstance(t, str):
            bad.append(f"{path}:{n}: needs string fields 'prediction' and 'target'")
            continue
        preds.append(p)
        refs.append(t)
    if not preds:
        _fail(f"{path}: no line with both 'prediction' and 'target'" + (f" ({bad[0]})" if bad else ""))
    res = text_report(preds, refs, n_boot=bootstrap, coco=not no_coco)
    res["skipped_lines"] = bad
    if as_json:
        out.print_json(json.dumps(res))
        return
    for k, v in res.items():
        if isinstance(v, dict) and "value" in v:
            ci = f"  [{v['lo']:.2f}, {v['hi']:.2f}]" if "lo" in v else ""
            out.print(f"{k:24s} {v['value']:.3f}{ci}", highlight=False)
    out.print(f"{res['n']} reports scored; {len(bad)} line(s) skipped", highlight=False)
    raise typer.Exit(1 if bad else 0)


@draft_app.command("report", epilog=(
    "Example: medweave draft report --model demo-out/models/sequential --case CASE_ID   "
    "(or --image picture.dcm; --json for sentences, citations and flags)"))
def report_command(
    model: Path = typer.Option(..., "--model", help="Fusion model folder (from `medweave train`) with an image "
                               "modality; its store's reports are the knowledge base, its heads predict findings."),
    case: Optional[str] = typer.Option(None, "--case", help="A case of the model's cohort to draft for."),
    image: Optional[Path] = typer.Option(None, "--image", help="A new picture (DICOM, PNG, JPEG) to draft for."),
    store: Optional[Path] = typer.Option(None, "--store", help="Another store (default: the model's)."),
    method: str = typer.Option("grounded", "--method", help="grounded, consensus or nearest."),
    k: int = typer.Option(5, "-k", help="Similar cases to draw on."),
    splits: str = typer.Option("train", "--splits", help="Comma-separated splits the draft may cite."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Draft a report from a picture: similar cases' reports, predicted findings, every sentence citing
    its case(s), contradictions with the predictions flagged."""
    from ..explain import ExplainError
    from .report import ReportDraftError, StoreReportDrafter, check_citations

    if (case is None) == (image is None):
        _fail("give either --case CASE_ID or --image FILE")
    try:
        srd = StoreReportDrafter(model, store, k=k, splits=[s.strip() for s in splits.split(",") if s.strip()])
        if case is not None:
            d = srd.draft_case(case, method)
        else:
            if not image.is_file():
                _fail(f"{image}: no such file")
            from ..encode.loaders import load_array

            try:
                pixels = load_array(image)
            except Exception as exc:  # noqa: BLE001 - any decoder's failure is this file's error
                _fail(f"{image}: not a readable picture (DICOM, PNG, JPEG, TIFF): {exc}")
            d = srd.draft_image(pixels, method)
    except (ReportDraftError, ExplainError, FileNotFoundError) as exc:
        _fail(str(exc))
    problems = check_citations(d, srd.kb)
    res = {**d.to_dict(), "citation_problems": problems}
    if as_json:
        out.print_json(json.dumps(res, default=str))
    else:
        for sec in ("FINDINGS", "IMPRESSION"):
            sents = [s for s in d.sentences if s.section == sec]
            if not sents:
                continue
            out.print(f"{sec}:", highlight=False, markup=False)
            for s in sents:
                cites = ", ".join(f"case {c}" for c in dict.fromkeys(s.cite_cases))
                out.print(f"  {s.text} [{cites}]" + (f"  (added: {s.added_for} predicted)" if s.added_for else ""),
                          highlight=False, markup=False)
                if s.flag:
                    out.print(f"    FLAG: {s.flag}", highlight=False, markup=False)
        out.print("predicted from the picture: " + ", ".join(f"{h} {p:.2f}" for h, p in d.predicted.items()),
                  highlight=False, markup=False)
        out.print(f"drawn on {len(d.sources)} similar case(s) of split(s) {splits}; citations "
                  f"{'checked' if not problems else 'WITH PROBLEMS: ' + '; '.join(problems)}",
                  highlight=False, markup=False)
    raise typer.Exit(1 if problems else 0)
