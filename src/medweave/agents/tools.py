"""medweave's capabilities as tools: one ``Tool`` per capability, each with a pydantic model of its
arguments (the JSON schema an agent sees), a description written for a model choosing tools, and a
function over a ``Toolbox`` (a store, optionally a fusion model and a VQA model: the same
``ServerState`` the REST server holds).

``Toolbox.call(name, arguments)`` is the one way in (the MCP server, the OpenAI function-calling
loop and workflows all go through it). It

- validates the arguments (strict types, unknown keys refused): a bad one is a ``ToolError`` naming it;
- answers from de-identified store content only (no source paths, no blob paths, no file names);
- writes nothing outside the store: evaluation runs go to ``STORE/agent-runs/<run id>/``;
- logs every call, arguments de-identified (free text scrubbed, pictures replaced by their size and
  hash), to ``STORE/agent-log.jsonl``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

LOG_NAME = "agent-log.jsonl"
RUNS_DIR = "agent-runs"
MAX_IMAGE_BYTES = 20 * 1024 * 1024
# argument names whose values are free text (scrubbed in the log); pictures are never logged
FREE_TEXT = ("question", "findings")
# fields never returned (they point at files, which may be named after a patient)
HIDDEN_FIELDS = {"source_path", "blob", "unit_id", "source_id", "path"}


class ToolError(Exception):
    """A call that cannot be answered. ``kind``: ``invalid_argument`` (wrong type, value, unknown key),
    ``not_found`` (unknown case, item, run), ``unavailable`` (the server was not started with the part
    it needs: the message names the option), ``unknown_tool``, ``timeout``, ``internal``.
    ``argument``: the argument at fault, when one is."""

    def __init__(self, message: str, kind: str = "invalid_argument", argument: str | None = None):
        super().__init__(message)
        self.message, self.kind, self.argument = message, kind, argument

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"kind": self.kind, "argument": self.argument, "message": self.message}}


class Args(BaseModel):
    """Tool arguments: strict types (a string is not a number), unknown keys refused."""

    model_config = ConfigDict(extra="forbid", strict=True)


# --- argument models -----------------------------------------------------------------------------
class FindCasesArgs(Args):
    split: Literal["train", "valid", "test"] | None = Field(None, description="Only cases of this split.")
    present: list[str] = Field(default_factory=list, description="Modalities the case must have (e.g. image, text).")
    absent: list[str] = Field(default_factory=list, description="Modalities the case must lack.")
    target: str | None = Field(None, description="A target name; with target_value, only cases with that value.")
    target_value: float | None = Field(None, description="The value of `target` (e.g. 1 for positive).")
    limit: int = Field(20, ge=1, le=200, description="At most this many cases.")
    offset: int = Field(0, ge=0, description="Skip this many matching cases (paging).")


class CaseArgs(Args):
    case_id: str = Field(description="A case id as returned by find_cases (a de-identified pseudonym).")


class PredictArgs(CaseArgs):
    explain: bool = Field(True, description="Add each modality's contribution (Shapley values, absent = masked).")


class AnswerArgs(Args):
    question: str = Field(min_length=1, max_length=500, description="The question, e.g. 'Is there an effusion?'.")
    case_id: str | None = Field(None, description="Ask about this case's (first) picture.")
    item_id: str | None = Field(None, description="Ask about this image item of the store.")
    image_base64: str | None = Field(None, description="Or a picture (PNG, JPEG, TIFF, DICOM), base64-encoded.")


class PictureArgs(Args):
    case_id: str | None = Field(None, description="The picture of this case.")
    item_id: str | None = Field(None, description="Or this image item of the store.")
    image_base64: str | None = Field(None, description="Or a picture (PNG, JPEG, TIFF, DICOM), base64-encoded.")


class SimilarQuestionsArgs(PictureArgs):
    question: str = Field(min_length=1, max_length=500, description="The question asked about the picture.")
    k: int = Field(10, ge=1, le=50, description="How many training questions.")


class PictureFactsArgs(PictureArgs):
    question: str | None = Field(None, max_length=500, description="A question; its named organ, modality or "
                                 "plane is checked against the picture's.")
    k: int = Field(5, ge=1, le=50, description="Training pictures to read the facts from.")


class SimilarArgs(CaseArgs):
    modality: str = Field("image", description="Compare the embeddings of this modality.")
    k: int = Field(5, ge=1, le=50, description="How many similar cases.")


class DraftArgs(CaseArgs):
    section: Literal["report", "impression"] = Field(
        "report", description="'report': findings and impression; 'impression': the impression only.")
    method: Literal["grounded", "consensus", "nearest"] = Field("grounded", description="Drafting method.")
    k: int = Field(5, ge=1, le=20, description="Similar training cases to draw on.")


class CohortArgs(Args):
    split: Literal["train", "valid", "test"] | None = Field(None, description="Summarise one split only.")


class EvaluateArgs(Args):
    kind: Literal["model", "vqa"] = Field(
        "model", description="'model': the fusion model on a split of its cohort (metrics with 95% intervals); "
        "'vqa': a harness task answered by the VQA model.")
    split: Literal["train", "valid", "test"] | None = Field(None, description="kind=model: the split (default test).")
    task: str | None = Field(None, description="kind=vqa: a task name (see `medweave eval tasks`), e.g. vqa-rad.")
    data: str | None = Field(None, description="kind=vqa: the task's question file (under an allowed data folder).")
    images: str | None = Field(None, description="kind=vqa: the task's image folder (under an allowed data folder).")
    limit: int = Field(50, ge=1, le=2000, description="kind=vqa: at most this many samples (seeded choice).")


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    args: type[Args]
    run: Callable[["Toolbox", Any], Any]
    needs: str | None = None  # "model", "vqa": what the toolbox must hold

    def input_schema(self) -> dict[str, Any]:
        schema = self.args.model_json_schema()
        schema.pop("title", None)
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)
        return schema

    def openai(self) -> dict[str, Any]:
        """This tool as an OpenAI function-calling tool."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.input_schema()}}


# --- the toolbox ---------------------------------------------------------------------------------
class Toolbox:
    """A store with optional fusion and VQA models, answering tool calls (see the module notes)."""

    def __init__(self, store: str | Path | None = None, model: str | Path | None = None,
                 vqa_model: str | Path | None = None, data_roots: list[str | Path] = (), log: bool = True):
        from ..serve.state import build_state
        from ..settings import shared_data_dir

        self.state = build_state(store, model, vqa_model)
        if self.state.store_dir is None:
            raise ValueError("the tools need a store: give --store DIR or a --model DIR trained on one")
        self.store_dir = Path(self.state.store_dir).resolve()
        self.data_roots = [Path(p).resolve() for p in (*data_roots, shared_data_dir())]
        self.log_enabled = log
        self._log_lock = threading.Lock()
        self._drafter = None
        self._drafter_lock = threading.Lock()

    # the one way in
    def call(self, name: str, arguments: dict[str, Any] | None, client: str = "") -> Any:
        """Run tool ``name``; a ``ToolError`` for anything that is not an answer. Logged either way."""
        t0 = time.perf_counter()
        error: ToolError | None = None
        try:
            tool = TOOLS.get(name)
            if tool is None:
                raise ToolError(f"unknown tool {name!r}; tools: {', '.join(TOOLS)}", "unknown_tool", "name")
            if arguments is not None and not isinstance(arguments, dict):
                raise ToolError(f"arguments must be an object (JSON dict), got {type(arguments).__name__}")
            args = parse_args(tool, arguments or {})
            if tool.needs == "model" and self.state.ctx is None:
                raise ToolError(f"{name} needs a fusion model: start with --model DIR", "unavailable")
            if tool.needs == "vqa" and self.state.answerer is None:
                raise ToolError(f"{name} needs a VQA model: start with --vqa-model DIR", "unavailable")
            return clean(tool.run(self, args))
        except ToolError as exc:
            error = exc
            raise
        except Exception as exc:  # our parts' own errors, turned into one structured shape
            error = as_tool_error(exc)
            raise error from None
        finally:
            self._log(name, arguments, client, error, time.perf_counter() - t0)

    def call_safe(self, name: str, arguments: dict[str, Any] | None, client: str = "") -> dict[str, Any]:
        """``{"result": ...}`` or ``{"error": {kind, argument, message}}``: never raises for a bad call."""
        try:
            return {"result": self.call(name, arguments, client)}
        except ToolError as exc:
            return exc.to_dict()

    def _log(self, name: str, arguments: Any, client: str, error: ToolError | None, seconds: float) -> None:
        if not self.log_enabled:
            return
        rec = {"time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "tool": str(name)[:80],
               "client": client, "arguments": deidentify_arguments(arguments), "ok": error is None,
               "seconds": round(seconds, 4)}
        if error is not None:
            rec["error"] = {"kind": error.kind, "argument": error.argument}
        with self._log_lock, open(self.store_dir / LOG_NAME, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec, default=str) + "\n")

    # helpers the tools share
    @property
    def ctx(self):
        return self.state.ctx

    def check_case(self, case_id: str) -> int:
        if self.ctx is None:
            raise ToolError("cases need a fusion model: start with --model DIR", "unavailable")
        if case_id not in self.ctx._row:
            known = ", ".join(self.ctx.dataset.case_ids[:3])
            raise ToolError(f"unknown case {case_id!r}; {len(self.ctx._row)} cases are known, e.g. {known} "
                            "(find_cases lists them)", "not_found", "case_id")
        return self.ctx._row[case_id]

    def check_modality(self, modality: str, argument: str) -> None:
        mods = self.ctx.modalities
        if modality not in mods:
            raise ToolError(f"unknown modality {modality!r}; the model's modalities: {', '.join(mods)}",
                            argument=argument)

    def drafter(self):
        with self._drafter_lock:
            if self._drafter is None:
                from ..draft.report import StoreReportDrafter

                self._drafter = StoreReportDrafter(self.ctx.model_dir, self.store_dir)
            return self._drafter

    def vqa_facts(self) -> tuple[dict[str, dict[str, str]], list[str], np.ndarray]:
        """(facts per training picture, the training pictures, their L2-normalised embeddings) of the
        VQA model: what its training questions state of each picture (``vqa.facts.picture_facts``)."""
        with self._drafter_lock:
            if getattr(self, "_facts", None) is None:
                from ..vqa.facts import picture_facts

                model = self.state.answerer.model
                recs = [(c["image"], c["question"], c.get("question_type", ""), c["answer"], c.get("organ", ""))
                        for c in model.cases]
                first = {}
                for i, c in enumerate(model.cases):
                    first.setdefault(c["image"], i)
                pictures = list(first)
                self._facts = (picture_facts(recs), pictures, model.mem_img[[first[p] for p in pictures]])
            return self._facts

    def allowed_path(self, value: str | None, argument: str) -> str | None:
        """A data path the caller may read: inside the store or an allowed data folder."""
        if value is None:
            return None
        p = Path(value).expanduser().resolve()
        roots = [self.store_dir, *self.data_roots]
        if not any(p.is_relative_to(r) for r in roots):
            raise ToolError(f"{argument} must lie inside the store or an allowed data folder (--data-root)",
                            argument=argument)
        if not p.exists():
            raise ToolError(f"{argument}: no such file or folder in the allowed data folders", "not_found", argument)
        return str(p)

    def run_dir(self, run_id: str) -> Path:
        if not run_id or not all(c in "0123456789abcdef" for c in run_id):
            raise ToolError(f"invalid run id {run_id!r}: expected the hexadecimal id run_evaluation returned",
                            argument="run_id")
        d = self.store_dir / RUNS_DIR / run_id
        if not (d / "metrics.json").is_file():
            raise ToolError(f"no run {run_id!r} in this store", "not_found", "run_id")
        return d

    # resources (read-only views, also reachable as MCP resources)
    def model_card(self) -> dict[str, Any]:
        card: dict[str, Any] = {"store": {"cases_with_items": None}, "fusion_model": None, "vqa_model": None}
        from ..store import Store

        with Store(self.store_dir) as st:
            card["store"] = {"patients": int(st.con.execute("SELECT count(*) FROM patients").fetchone()[0]),
                             "items_by_modality": dict(st.con.execute(
                                 "SELECT modality, count(*) FROM items GROUP BY modality ORDER BY 1").fetchall())}
        if self.ctx is not None:
            c = self.ctx
            metrics_file = Path(c.model_dir) / "metrics.json"
            card["fusion_model"] = {
                "kind": c.model.kind, "modalities": c.modalities,
                "heads": [{"name": h.name, "kind": h.kind, "classes": list(h.classes or [])} for h in c.model.head_specs],
                "explained_head": c.head.name, "cases": len(c.dataset), "splits": c.cohort.summary()["splits"],
                "encoders": c.config.get("encoders"), "temperatures": c.config.get("temperatures"),
                "metrics": json.loads(metrics_file.read_text()) if metrics_file.is_file() else None}
        if self.state.answerer is not None:
            a = self.state.answerer
            card["vqa_model"] = {"name": a.name, "fingerprint": a.fingerprint(),
                                 "answers": len(getattr(getattr(a, "model", None), "answers", []) or [])}
        return clean(card)

    def case_resource(self, case_id: str) -> dict[str, Any]:
        return self.call("show_case", {"case_id": case_id}, "resource")

    def run_metrics(self, run_id: str) -> dict[str, Any]:
        return json.loads((self.run_dir(run_id) / "metrics.json").read_text())

    def close(self) -> None:
        a = self.state.answerer
        if a is not None:
            a.close()


def parse_args(tool: Tool, arguments: dict[str, Any]) -> Args:
    try:
        return tool.args.model_validate(arguments)
    except ValidationError as exc:
        e = exc.errors()[0]
        arg = ".".join(str(x) for x in e["loc"]) or None
        what = "unknown argument" if e["type"] == "extra_forbidden" else e["msg"]
        allowed = ", ".join(tool.args.model_fields)
        raise ToolError(f"{tool.name}: argument {arg!r}: {what} (got {e.get('input')!r:.60}); arguments: {allowed}",
                        argument=arg) from None


def as_tool_error(exc: Exception) -> ToolError:
    """Our parts' errors in the tool error shape (an unexpected one says only its class name)."""
    from ..explain import ExplainError
    from ..serve.state import ServeError

    if isinstance(exc, ServeError):
        kind = {404: "not_found", 503: "unavailable"}.get(exc.status, "invalid_argument")
        return ToolError(exc.message, kind)
    if isinstance(exc, ExplainError):
        msg = str(exc)
        return ToolError(msg, "not_found" if msg.startswith("unknown case") else "invalid_argument",
                         "case_id" if msg.startswith("unknown case") else None)
    from ..evaluate.samples import TaskError

    if isinstance(exc, (TaskError, FileNotFoundError)):
        return ToolError(str(exc), "invalid_argument")
    return ToolError(f"internal error ({type(exc).__name__}); see the server log", "internal")


def clean(obj: Any) -> Any:
    """JSON-ready (numpy scalars to numbers, NaN to None) without fields that point at files."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items() if k not in HIDDEN_FIELDS}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, np.ndarray):
        return clean(obj.tolist())
    return str(obj)


def deidentify_arguments(arguments: Any) -> Any:
    """Arguments as logged: free text scrubbed, pictures as size + hash, other strings cut to 200 chars."""
    from ..store import scrub_text

    if not isinstance(arguments, dict):
        return f"<{type(arguments).__name__}>" if arguments is not None else None
    out = {}
    for k, v in arguments.items():
        if k == "image_base64" and isinstance(v, str):
            out[k] = f"<picture: {len(v)} base64 chars, sha256 {hashlib.sha256(v.encode()).hexdigest()[:12]}>"
        elif isinstance(v, str):
            out[k] = scrub_text(v[:200]) if k in FREE_TEXT or k in ("data", "images") else v[:200]
        elif isinstance(v, (int, float, bool)) or v is None:
            out[k] = v
        elif isinstance(v, list):
            out[k] = [scrub_text(str(x)[:80]) for x in v[:20]]
        else:
            out[k] = f"<{type(v).__name__}>"
    return out


# --- the tools -----------------------------------------------------------------------------------
def _find_cases(tb: Toolbox, a: FindCasesArgs) -> dict[str, Any]:
    from ..serve.api import case_row

    ctx = tb.ctx
    tab = ctx.cohort.table
    keep = np.ones(len(tab), dtype=bool)
    if a.split:
        keep &= tab["split"].to_numpy() == a.split
    for arg, want in (("present", True), ("absent", False)):
        for m in getattr(a, arg):
            tb.check_modality(m, arg)
            keep &= ctx.dataset.mask[:, ctx.modalities.index(m)] == want
    if a.target is not None:
        if a.target not in ctx.cohort.targets:
            raise ToolError(f"unknown target {a.target!r}; targets: {', '.join(ctx.cohort.targets)}", argument="target")
        if a.target_value is not None:
            keep &= tab[a.target].to_numpy(dtype=float, na_value=np.nan) == a.target_value
    idx = np.flatnonzero(keep)
    page = idx[a.offset:a.offset + a.limit]
    return {"total": int(len(idx)), "offset": a.offset, "cases": [case_row(ctx, int(i)) for i in page]}


def _show_case(tb: Toolbox, a: CaseArgs) -> dict[str, Any]:
    from ..serve.api import case_detail

    i = tb.check_case(a.case_id)
    d = case_detail(tb.state, a.case_id)
    row = tb.ctx.cohort.table.iloc[i]
    d["presence"] = {m: {"present": bool(tb.ctx.dataset.mask[i, j]),
                         "items": len(row[f"{m}_items"]) if f"{m}_items" in row.index else None}
                     for j, m in enumerate(tb.ctx.modalities)}
    for part in ("images", "signals"):  # item ids only: the REST URLs mean nothing to an agent
        d[part] = [x["item_id"] for x in d.get(part, [])]
    return d


def _predict(tb: Toolbox, a: PredictArgs) -> dict[str, Any]:
    from ..explain.modalities import explain_modalities

    tb.check_case(a.case_id)
    out = tb.ctx.predict(a.case_id)
    if a.explain:
        e = explain_modalities(tb.ctx, a.case_id)
        out["explanation"] = {"head": tb.ctx.head.name, "prediction": e["prediction"],
                              "all_absent": e["all_absent"], "contributions": e["shapley"],
                              "note": "Shapley value of each modality in probability points; absent "
                                      "modalities are masked and contribute 0"}
    return out


def _picture(tb: Toolbox, a) -> tuple[bytes | None, str | None]:
    """(picture bytes, source) from one of the picture arguments (case_id, item_id, image_base64)."""
    from ..serve.api import image_png
    from ..serve.state import decode_image

    given = [k for k in ("case_id", "item_id", "image_base64") if getattr(a, k) is not None]
    if len(given) > 1:
        raise ToolError(f"give one picture: case_id, item_id or image_base64 (got {', '.join(given)})",
                        argument=given[1])
    data, source = None, None
    if a.case_id is not None:
        tb.check_case(a.case_id)
        items = tb.ctx.items_of(a.case_id, "image")
        if not items:
            raise ToolError(f"case {a.case_id!r} has no image", "not_found", "case_id")
        data, source = image_png(tb.state, items[0]), items[0]
    elif a.item_id is not None:
        try:
            data, source = image_png(tb.state, a.item_id), a.item_id
        except Exception as exc:
            err = as_tool_error(exc)
            raise ToolError(err.message, err.kind, "item_id") from None
    elif a.image_base64 is not None:
        try:
            data = base64.b64decode(a.image_base64, validate=True)
        except (binascii.Error, ValueError):
            raise ToolError("image_base64 is not valid base64", argument="image_base64") from None
        if len(data) > MAX_IMAGE_BYTES:
            raise ToolError(f"image_base64: the picture is over {MAX_IMAGE_BYTES >> 20} MiB", argument="image_base64")
        try:
            decode_image(data)
        except Exception as exc:
            raise ToolError(f"image_base64: {as_tool_error(exc).message}", argument="image_base64") from None
    return data, source


def _answer(tb: Toolbox, a: AnswerArgs) -> dict[str, Any]:
    from ..generate import ImageData
    from ..generate.messages import sniff_mime
    from ..serve.api import answer_question

    data, source = _picture(tb, a)
    picture = ImageData(data, sniff_mime(data) or "image/png") if data is not None else None
    out = answer_question(tb.state, picture, a.question)
    return {**out, "question": a.question, "picture": source or ("given" if data is not None else None)}


def _embedded(tb: Toolbox, a, question: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The VQA model's embedding of the picture argument (needed) and of ``question`` (when given)."""
    from ..generate import BackendError, ImageData
    from ..generate.messages import sniff_mime

    data, _ = _picture(tb, a)
    if data is None:
        raise ToolError("give a picture: case_id, item_id or image_base64", argument="image_base64")
    backend = tb.state.answerer
    try:
        with backend._lock:
            img = backend.picture_embedding(ImageData(data, sniff_mime(data) or "image/png"))
            q = backend.question_embedding(question) if question else None
    except BackendError as exc:
        raise ToolError(str(exc), argument="image_base64") from None
    return img, q


def _similar_questions(tb: Toolbox, a: SimilarQuestionsArgs) -> dict[str, Any]:
    from ..vqa.normalize import normalize_answer

    img, q = _embedded(tb, a, a.question)
    model = tb.state.answerer.model
    same = model.same_image(img[None])[0]
    hits = model.similar_cases(img[None], q[None], a.k)
    rows = []
    for h in hits:
        rows.append({"question": h["question"], "answer": normalize_answer(h["answer"]),
                     "answer_type": h.get("answer_type"), "question_type": h.get("question_type"),
                     "organ": h.get("organ"), "score": round(float(h["score"]), 4)})
    yesno = [r["answer"] for r in rows if r["answer"] in ("yes", "no")]
    return {"question": a.question, "same_picture_questions": int(same.sum()), "similar": rows,
            "yes_share": (sum(x == "yes" for x in yesno) / len(yesno)) if yesno else None,
            "note": "training questions closest in picture and question (cosine mean); answers normalised; "
                    "yes_share: the share of yes among their yes/no answers"}


def _picture_facts(tb: Toolbox, a: PictureFactsArgs) -> dict[str, Any]:
    from ..vqa.facts import KINDS, named_facts

    img, _ = _embedded(tb, a, None)
    facts, pictures, vecs = tb.vqa_facts()
    from ..vqa.model import _l2

    sims = (_l2(img[None]) @ vecs.T)[0]
    order = np.argsort(-sims)
    out: dict[str, Any] = {}
    for kind in KINDS:
        near = [i for i in order if kind in facts.get(pictures[i], {})][:a.k]
        if not near:
            out[kind] = None
            continue
        w = np.exp((sims[near] - sims[near].max()) / 0.02)
        dist: dict[str, float] = {}
        for i, wi in zip(near, w / w.sum()):
            v = facts[pictures[i]][kind]
            dist[v] = dist.get(v, 0.0) + float(wi)
        best = max(dist, key=dist.get)
        out[kind] = {"value": best, "probabilities": {k: round(v, 4) for k, v in sorted(dist.items())},
                     "nearest_similarity": round(float(sims[near[0]]), 4),
                     "same_picture": bool(sims[near[0]] >= tb.state.answerer.model.cfg.same_image_cos)}
    res: dict[str, Any] = {"facts": out}
    if a.question is not None:
        named = named_facts(a.question)
        checks = {}
        for kind in KINDS:
            vals = named.get(kind, [])
            if len(vals) != 1 or out[kind] is None:
                checks[kind] = None  # the question names none (or several: a choice, not a yes/no) or nothing known
            else:
                checks[kind] = round(out[kind]["probabilities"].get(vals[0], 0.0), 4)
        res.update(question=a.question, named={k: v for k, v in named.items() if v}, checks=checks)
    res["note"] = ("organ, modality and plane of the training pictures closest to this one (stated by their "
                   "questions and answers); checks: the probability that what the question names is so")
    return res


def _similar(tb: Toolbox, a: SimilarArgs) -> dict[str, Any]:
    from ..serve.state import nearest

    i = tb.check_case(a.case_id)
    tb.check_modality(a.modality, "modality")
    j = tb.ctx.modalities.index(a.modality)
    if not tb.ctx.dataset.mask[i, j]:
        raise ToolError(f"case {a.case_id!r} has no {a.modality} to compare", "not_found", "modality")
    hits = nearest(tb.ctx, tb.ctx.dataset.inputs[a.modality][i], a.modality, a.k, exclude=a.case_id)
    return {"case_id": a.case_id, "modality": a.modality, "similar": tb.state.with_reports(hits)}


def _draft(tb: Toolbox, a: DraftArgs) -> dict[str, Any]:
    from ..draft.report import ReportDraftError, check_citations

    tb.check_case(a.case_id)
    if "image" not in tb.ctx.modalities:
        raise ToolError("drafting a report needs a fusion model with an image modality", "unavailable")
    srd = tb.drafter()
    try:
        with tb._drafter_lock:  # k is the drafter's setting: one draft at a time
            srd.drafter.k = a.k
            d = srd.draft_case(a.case_id, a.method)
    except ReportDraftError as exc:
        raise ToolError(str(exc), "invalid_argument", "case_id") from None
    sents = [s for s in d.sentences if a.section == "report" or s.section == "IMPRESSION"]
    return {"case_id": a.case_id, "section": a.section, "method": a.method,
            "text": " ".join(s.text for s in sents),
            "sentences": [{"section": s.section, "text": s.text, "cites_cases": list(dict.fromkeys(s.cite_cases)),
                           "flag": s.flag} for s in sents],
            "predicted": d.predicted, "citation_problems": check_citations(d, srd.kb)}


def _cohort(tb: Toolbox, a: CohortArgs) -> dict[str, Any]:
    c = tb.ctx.cohort
    if a.split:
        if a.split not in set(c.table["split"]):
            raise ToolError(f"split {a.split!r} has no cases; splits: {', '.join(sorted(set(c.table['split'])))}",
                            argument="split")
        c = c.split(a.split)
    s = c.summary()
    s.pop("patients", None) if s.get("case_level") == "patient" else None
    s["modalities"] = list(c.modalities)
    s["missing_pattern_counts"] = {
        "+".join(m for m in c.modalities if bool(r[f"{m}_present"])) or "(none)": int(n)
        for r, n in _patterns(c.table, c.modalities)}
    return s


def _patterns(table, modalities):
    cols = [f"{m}_present" for m in modalities]
    counts = table.groupby(cols).size().sort_values(ascending=False)
    for key, n in counts.items():
        key = key if isinstance(key, tuple) else (key,)
        yield dict(zip(cols, key)), n


def _evaluate(tb: Toolbox, a: EvaluateArgs) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:12]
    out = tb.store_dir / RUNS_DIR / run_id
    if a.kind == "model":
        if tb.ctx is None:
            raise ToolError("kind=model needs a fusion model: start with --model DIR", "unavailable", "kind")
        from ..evaluate import EvaluateError, evaluate_model

        try:
            res = evaluate_model(tb.ctx.model_dir, store=tb.store_dir, split=a.split or "test", n_boot=300,
                                 progress=False)
        except EvaluateError as exc:
            raise ToolError(str(exc), argument="split") from None
        out.mkdir(parents=True)
        res = clean(res)
        res.pop("model", None), res.pop("data", None)
        (out / "metrics.json").write_text(json.dumps(res, indent=1))
        return {"run_id": run_id, "kind": "model", "resource": f"medweave://runs/{run_id}/metrics", "metrics": res}
    if tb.state.answerer is None:
        raise ToolError("kind=vqa needs a VQA model: start with --vqa-model DIR", "unavailable", "kind")
    if not a.task:
        raise ToolError("kind=vqa needs a task name", argument="task")
    from ..evaluate.tasks import builtin_tasks, load_task

    if a.task not in builtin_tasks():
        raise ToolError(f"unknown task {a.task!r}; tasks: {', '.join(sorted(builtin_tasks()))}", argument="task")
    task = load_task(a.task)
    data, images = tb.allowed_path(a.data, "data"), tb.allowed_path(a.images, "images")
    if data is None and not Path(task.path(task.data)).exists():
        raise ToolError(f"task {a.task}: its data is not here; give data (and images)", "not_found", "data")
    res = run_task_quiet(task, tb.state.answerer, out, data, images, a.limit)
    keep = {k: v for k, v in res.items() if k in ("task", "backend", "samples", "failed", "metrics", "breakdown")}
    return {"run_id": run_id, "kind": "vqa", "resource": f"medweave://runs/{run_id}/metrics", **keep}


def run_task_quiet(task, backend, out: Path, data, images, limit):
    from ..evaluate.harness import run_task

    return run_task(task, backend, out, data=data, images=images, limit=limit, n_boot=300, progress=False)


TOOLS: dict[str, Tool] = {t.name: t for t in [
    Tool("find_cases", "List cases of the cohort (de-identified pseudonyms) with their split, the modalities "
         "each has and its targets; filter by split, modalities present or absent, and a target's value.",
         FindCasesArgs, _find_cases, "model"),
    Tool("show_case", "What one case holds: presence by modality (absent is a value), its de-identified "
         "reports, labs, covariates, image and signal item ids. No names, dates of birth or file paths.",
         CaseArgs, _show_case, "model"),
    Tool("predict", "The fusion model's calibrated probability for every head of one case, the sequential "
         "model's step trace, and (explain=true) each modality's contribution to the prediction.",
         PredictArgs, _predict, "model"),
    Tool("answer_question", "Answer a question about a picture with the VQA model (closed yes/no or open "
         "short answers, with a confidence): the picture of a case, an image item, or a base64 picture.",
         AnswerArgs, _answer, "vqa"),
    Tool("similar_cases", "Cases whose embedding of a modality (default image) is closest to this case's, "
         "with their targets and de-identified reports (findings, impression).",
         SimilarArgs, _similar, "model"),
    Tool("similar_questions", "Training questions of the VQA model closest to a question about a picture "
         "(picture and question similarity), with their answers and the share of yes among them.",
         SimilarQuestionsArgs, _similar_questions, "vqa"),
    Tool("picture_facts", "A picture's organ, modality (CT, MRI, x-ray) and plane, read from the training "
         "pictures closest to it; with a question, the probability that the organ/modality/plane it names is so.",
         PictureFactsArgs, _picture_facts, "vqa"),
    Tool("draft_report", "Draft a report (findings and impression) or only its impression for a case from "
         "similar training cases' reports; every sentence cites the cases it rests on; sentences that "
         "contradict the model's predictions are flagged.", DraftArgs, _draft, "model"),
    Tool("summarize_cohort", "Counts of the cohort: cases, splits, presence and absence per modality, "
         "the combinations of modalities present, target prevalence.", CohortArgs, _cohort, "model"),
    Tool("run_evaluation", "Run an evaluation: the fusion model on a split (AUROC and more with 95% "
         "intervals) or a harness task answered by the VQA model; returns the metrics and a run id whose "
         "metrics stay readable as the resource medweave://runs/{run_id}/metrics.",
         EvaluateArgs, _evaluate),
]}


def openai_tools(names: list[str] | None = None) -> list[dict[str, Any]]:
    """The tools as OpenAI function-calling schemas (``tools=`` of a chat completion request)."""
    return [TOOLS[n].openai() for n in (names or TOOLS)]
