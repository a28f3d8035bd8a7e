"""``medweave mcp`` (the tools as an MCP server) and ``medweave agent`` (a workflow file)."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

MCP_EPILOG = ("Example: medweave mcp --store demo-out/store --model demo-out/models/sequential "
              "--vqa-model demo-out/vqa-phantom-model   (stdio; --transport http --port 8765 for streamable HTTP at "
              "http://127.0.0.1:8765/mcp)")


def _fail(message: str, code: int = 2) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def mcp_command(
    store: Optional[Path] = typer.Option(None, "--store", help="Store folder (default: the --model's store)."),
    model: Optional[Path] = typer.Option(None, "--model", help="Fusion model folder from `medweave train`."),
    vqa_model: Optional[Path] = typer.Option(None, "--vqa-model", help="VQA model folder from `medweave vqa train`."),
    transport: str = typer.Option("stdio", "--transport", help="stdio or http (streamable HTTP at /mcp)."),
    host: str = typer.Option("127.0.0.1", "--host", help="http: loopback address to bind."),
    port: int = typer.Option(8765, "--port", help="http: port."),
    data_root: List[Path] = typer.Option([], "--data-root", help="A folder run_evaluation may read task data "
                                         "from (repeatable; the store and $MEDWEAVE_DATA always may)."),
    tools: bool = typer.Option(False, "--openai-tools", help="Print the tools as OpenAI function-calling "
                               "schemas (JSON) and exit."),
) -> None:
    """Serve medweave's capabilities to any MCP client: find and show cases, predict with explanation,
    answer a question about a picture, similar cases, draft a report, summarise the cohort, run an
    evaluation; resources: a case, the model card, a run's metrics. Every call is logged, arguments
    de-identified, to STORE/agent-log.jsonl; nothing is written outside the store."""
    if tools:
        from .tools import openai_tools

        print(json.dumps(openai_tools(), indent=1))
        return
    if transport not in ("stdio", "http"):
        _fail(f"--transport {transport!r}: allowed values: stdio, http")
    from ..settings import is_loopback
    from .tools import Toolbox

    if transport == "http" and not is_loopback(host):
        _fail(f"refusing to listen on {host}: medweave mcp serves loopback only (127.0.0.1, ::1, localhost); "
              "reach it from elsewhere through an SSH tunnel")
    try:
        # nothing but protocol messages may reach stdout on the stdio transport
        with contextlib.redirect_stdout(sys.stderr):
            tb = Toolbox(store, model, vqa_model, data_roots=list(data_root))
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    from .mcp_server import run_http, run_stdio

    try:
        if transport == "stdio":
            run_stdio(tb)
        else:
            run_http(tb, host, port)
    except ValueError as exc:
        _fail(str(exc))
    finally:
        tb.close()


AGENT_EPILOG = ("Example: medweave agent --workflow configs/agent-phantom.yaml --store demo-out/store "
                "--model demo-out/models/sequential --vqa-model demo-out/vqa-phantom-model --split test --limit 20 --out agent.html")


def agent_command(
    workflow: Path = typer.Option(..., "--workflow", help="Workflow file (YAML, TOML or JSON)."),
    store: Optional[Path] = typer.Option(None, "--store", help="Store folder (default: the --model's store)."),
    model: Optional[Path] = typer.Option(None, "--model", help="Fusion model folder (its cohort's cases)."),
    vqa_model: Optional[Path] = typer.Option(None, "--vqa-model", help="VQA model folder (answer_question)."),
    questions: Optional[Path] = typer.Option(None, "--questions", help="cases: questions — the questions to "
                                             "answer (VQA-RAD layout JSON, pictures in images/ beside it)."),
    fit_questions: Optional[Path] = typer.Option(None, "--fit-questions", help="cases: questions — the questions "
                                                 "the weighted decider is fitted on (never the answered ones)."),
    case: List[str] = typer.Option([], "--case", help="A case to answer for (repeatable)."),
    split: Optional[str] = typer.Option(None, "--split", help="Answer for the cases of this split instead."),
    limit: Optional[int] = typer.Option(None, "--limit", help="With --split: a seeded choice of this many cases."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the run as an HTML page (FILE.html)."),
    out_json: Optional[Path] = typer.Option(None, "--json-out", help="Write the whole run (every step) as JSON."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary and answers as JSON."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Run an evidence-based workflow: gather evidence with medweave's tools (fixed plan or an LLM
    planner), decide (weights fitted on a validation split, or an LLM), over several rollouts whose
    agreement decides whether to answer or abstain; every step recorded."""
    from rich.console import Console

    from .tools import Toolbox, ToolError
    from .workflow import Runner, WorkflowError, load_workflow

    console = Console()
    try:
        wf = load_workflow(workflow)
    except WorkflowError as exc:
        _fail(str(exc))
    source = None
    if wf.cases == "questions":
        if questions is None:
            _fail(f"{workflow}: cases: questions — give --questions FILE (and --fit-questions FILE for a "
                  "weighted decider)")
        if wf.decider.kind == "weighted" and fit_questions is None:
            _fail("the weighted decider is fitted on other questions than it answers: give --fit-questions FILE")
        if fit_questions is not None and fit_questions.resolve() == questions.resolve():
            _fail("--fit-questions is the --questions file: the decider would be fitted on the questions it answers")
        split = split or "questions"
    elif bool(case) == bool(split):
        _fail("give --case CASE_ID (repeatable) or --split NAME (with --limit N)")
    try:
        if wf.cases == "questions":
            from ..vqa.data import VqaDataError

            try:
                from .workflow import QuestionCases

                parts = {split: questions, **({wf.decider.fit_on: fit_questions} if fit_questions else {})}
                source = QuestionCases(wf, parts)
            except VqaDataError as exc:
                _fail(str(exc))
            if store is None and model is None:
                _fail("give --store DIR: the tools log their calls there (a new folder becomes an empty store)")
            if store is not None and not (store / "catalog.duckdb").exists() and \
                    (not store.exists() or not any(store.iterdir())):
                from ..store import Store

                Store(store, write=True).close()
        tb = Toolbox(store, model, vqa_model)
    except (WorkflowError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    try:
        runner = Runner(wf, tb, cases=source)
        if case and source is not None:
            ids = list(case)
            for c in ids:
                source.check(c)
        elif case:
            for c in case:
                if c not in tb.ctx._row:
                    _fail(f"--case {c!r}: unknown case; e.g. {', '.join(tb.ctx.dataset.case_ids[:3])}")
            ids = list(case)
        else:
            ids = runner.cases(split, limit)
            if wf.decider.kind == "weighted" and split == wf.decider.fit_on:
                _fail(f"--split {split}: the decider's weights are fitted on that split (decider.fit_on); "
                      "measure on another")
        result = runner.run(ids, progress=not quiet and not as_json)
    except WorkflowError as exc:
        _fail(str(exc))
    except ToolError as exc:
        _fail(exc.message)
    finally:
        from .workflow import wait_for_stragglers

        wait_for_stragglers(60)  # tool calls past their timeout: let them end before exiting
        tb.close()
    if out is not None:
        from .html import render_html

        out.write_text(render_html(result), encoding="utf-8")
    if out_json is not None:
        out_json.write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    brief = {"summary": result["summary"], "decider": result["decider"],
             "answers": [{k: r[k] for k in ("case_id", "answer", "majority", "agreement", "probability", "truth",
                                            "steps", "seconds")} for r in result["records"]]}
    if as_json:
        print(json.dumps(brief, indent=1, default=str))
        return
    for r in brief["answers"]:
        ans = r["answer"] or f"abstain (majority {r['majority']})"
        truth = f", truth {r['truth']}" if r["truth"] else ""
        console.print(f"case {r['case_id']}: {ans} (agreement {r['agreement']:.2f}{truth}; {r['steps']} steps, "
                      f"{r['seconds']:.2f} s)", highlight=False, markup=False)
    s = result["summary"]
    for key in ("coverage", "accuracy_answered", "accuracy_all"):
        v = s.get(key)
        if v:
            console.print(f"{key}: {v['value']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}] (n={v['n']})", highlight=False)
    if out is not None:
        console.print(f"written: {out}", highlight=False, markup=False)
