"""Evidence-based diagnostic workflows declared as data (``medweave agent --workflow FILE``).

A workflow file (YAML or TOML) states the question, the evidence to gather (tools of
``medweave.agents.tools`` with their arguments, and how to read a number in [0, 1] from each output),
the planner (``fixed``: the file's evidence list; ``llm``: a model picks tools, one JSON call per step,
at most ``max_steps``), the decider (``weighted``: logistic weights over the evidence fitted on a
validation split; ``llm``: a model reads the evidence and answers yes or no) and the rollouts
(MedMMV-style verification: several rollouts with different tool orders, prompts or bootstrap-fitted
weights; their agreement is reported and the answer abstains below ``abstain_below``).

Every step is recorded: tool, arguments (de-identified as in the tool log), output, seconds, error.
A tool that runs past ``timeout_s`` is recorded as a timeout and the run goes on without it; an LLM
that emits a malformed call or names an unknown tool gets the error back as its next message, and
the plan ends after ``max_steps`` whatever it does.
"""

from __future__ import annotations

import json
import math
import queue
import re
import threading
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .tools import TOOLS, ToolError, Toolbox, deidentify_arguments


class WorkflowError(ValueError):
    """A workflow file that does not validate, or a run that cannot start; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Evidence(_Strict):
    name: str = Field(description="A short name for this evidence (used in records and by the decider).")
    tool: str = Field(description="A tool name (see `medweave mcp --openai-tools`).")
    arguments: dict[str, Any] = Field(default_factory=dict, description="Arguments; case_id is added per case.")
    value: str = Field(description="How to read a probability from the output: a dotted path (heads.disease), "
                       "mean(path.*.field) over a list, or yes(answer, confidence) for a yes/no answer.")

    @field_validator("tool")
    @classmethod
    def _known_tool(cls, v: str) -> str:
        if v not in TOOLS:
            raise ValueError(f"unknown tool {v!r}; tools: {', '.join(TOOLS)}")
        return v


class BackendSpec(_Strict):
    kind: str = Field(description="A generation backend: builtin, openai, llama-cpp, transformers.")
    options: dict[str, Any] = Field(default_factory=dict)
    max_tokens: int = Field(96, ge=1, le=2048)


class Planner(_Strict):
    kind: Literal["fixed", "llm"] = "fixed"
    backend: BackendSpec | None = None
    max_steps: int = Field(6, ge=1, le=50)


class Decider(_Strict):
    kind: Literal["weighted", "llm"] = "weighted"
    fit_on: str = Field("valid", description="The split the weights are fitted on (never the one measured).")
    threshold: float = Field(0.5, gt=0, lt=1)
    backend: BackendSpec | None = None
    C: float | Literal["cv"] = Field(1.0, description="Inverse strength of the penalty on the weights' distance "
                                     "from `prior` (larger: freer); cv: chosen by cross-validated log loss on "
                                     "the fitting cases (grouped by patient or picture) from a grid.")
    prior: dict[str, float] = Field(default_factory=dict, description="Evidence name -> the weight on its logit "
                                    "that the penalty pulls toward (others: toward 0), e.g. {fusion model: 1.0}: "
                                    "with little data the decider stays near that tool alone.")

    @field_validator("C")
    @classmethod
    def _positive(cls, v):
        if v != "cv" and not v > 0:
            raise ValueError(f"must be a positive number or cv, got {v!r}")
        return v


class Rollouts(_Strict):
    n: int = Field(3, ge=1, le=20)
    abstain_below: float = Field(0.67, ge=0, le=1, description="Abstain when the share of rollouts agreeing "
                                 "with the majority is below this.")
    seed: int = 0


class Workflow(_Strict):
    name: str
    question: str
    target: str | None = Field(None, description="The cohort target answers are scored against (and fitted on); "
                               "for cases: questions, the reference answer.")
    cases: Literal["cohort", "questions"] = Field("cohort", description="cohort: the cases of a fusion model's "
                                                  "cohort (--model); questions: questions about pictures in the "
                                                  "VQA-RAD layout (--questions), the picture and the question "
                                                  "filled into each tool that takes them.")
    positive: Any = 1
    evidence: list[Evidence] = Field(min_length=1)
    planner: Planner = Field(default_factory=Planner)
    decider: Decider = Field(default_factory=Decider)
    rollouts: Rollouts = Field(default_factory=Rollouts)
    timeout_s: float = Field(60.0, gt=0, description="Per tool call.")

    @model_validator(mode="after")
    def _backends(self):
        for part in ("planner", "decider"):
            spec = getattr(self, part)
            if spec.kind == "llm" and spec.backend is None:
                raise ValueError(f"{part}.kind is llm: {part}.backend is needed (kind and options)")
        if self.decider.kind == "weighted" and not self.target:
            raise ValueError("decider.kind weighted fits weights on a split: target is needed")
        names = [e.name for e in self.evidence]
        if len(set(names)) != len(names):
            raise ValueError(f"evidence names must be unique, got {names}")
        unknown = sorted(set(self.decider.prior) - set(names))
        if unknown:
            raise ValueError(f"decider.prior names {unknown}, not evidence of this workflow; evidence: {names}")
        return self


def load_workflow(path: str | Path) -> Workflow:
    """Read and validate a workflow file (.yaml/.yml/.toml/.json); errors name the key."""
    path = Path(path)
    if not path.is_file():
        raise WorkflowError(f"{path}: no such workflow file")
    from ..config import read_data_file

    try:
        data = read_data_file(path)
    except Exception as exc:  # noqa: BLE001 - any parser's complaint is this file's error
        raise WorkflowError(f"{path}: cannot be read as {path.suffix.lstrip('.') or 'YAML'}: {exc}") from None
    return parse_workflow(data, str(path))


def parse_workflow(data: Any, where: str = "workflow") -> Workflow:
    if not isinstance(data, dict):
        raise WorkflowError(f"{where}: expected a mapping of keys (name, question, evidence, ...)")
    try:
        return Workflow.model_validate(data)
    except ValidationError as exc:
        e = exc.errors()[0]
        key = ".".join(str(x) for x in e["loc"]) or "(top)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
        raise WorkflowError(f"{where}: {key}: {msg}") from None


# --- reading a number from a tool's output ---------------------------------------------------------
_CALL = re.compile(r"^\s*(mean|yes)\((.*)\)\s*$")


def _walk(obj: Any, parts: list[str]) -> list[Any]:
    if not parts:
        return [obj]
    head, rest = parts[0], parts[1:]
    if head == "*":
        items = obj if isinstance(obj, list) else list(obj.values()) if isinstance(obj, dict) else []
        return [v for it in items for v in _walk(it, rest)]
    if isinstance(obj, dict) and head in obj:
        return _walk(obj[head], rest)
    if isinstance(obj, list) and head.isdigit() and int(head) < len(obj):
        return _walk(obj[int(head)], rest)
    return []


def read_value(expr: str, output: Any, positive: Any = 1) -> float | None:
    """The evidence's probability, or None when the output does not hold it."""
    m = _CALL.match(expr)
    if m and m.group(1) == "yes":
        ans_path, conf_path = [x.strip() for x in m.group(2).split(",")]
        ans, conf = _walk(output, ans_path.split(".")), _walk(output, conf_path.split("."))
        if not ans or not conf or not isinstance(conf[0], (int, float)):
            return None
        word = str(ans[0]).strip().lower()
        if word not in ("yes", "no"):
            return None
        return float(conf[0]) if word == "yes" else 1.0 - float(conf[0])
    path = (m.group(2) if m else expr).strip().split(".")
    vals = _walk(output, path)
    if m and m.group(1) == "mean":
        nums = [1.0 if v == positive else 0.0 if v is not None else None for v in vals] \
            if vals and not all(isinstance(v, float) for v in vals) else vals
        nums = [float(v) for v in nums if isinstance(v, (int, float))]
        return float(np.mean(nums)) if nums else None
    if vals and isinstance(vals[0], (int, float)) and not isinstance(vals[0], bool):
        return float(vals[0])
    return None


# --- calling tools with a timeout --------------------------------------------------------------------
_STRAGGLERS: list[threading.Thread] = []  # calls past their timeout, still running


def wait_for_stragglers(timeout: float = 60.0) -> bool:
    """Wait (at most ``timeout`` s in all) for calls that ran past their timeout to end: before the
    interpreter exits, so that none is cut off inside native code. True when none is left."""
    end = time.monotonic() + timeout
    for t in list(_STRAGGLERS):
        t.join(max(0.0, end - time.monotonic()))
    _STRAGGLERS[:] = [t for t in _STRAGGLERS if t.is_alive()]
    return not _STRAGGLERS


def call_with_timeout(tb: Toolbox, tool: str, arguments: dict, timeout: float) -> tuple[Any, str | None, float]:
    """(output, error, seconds); a call past ``timeout`` is left to finish in a daemon thread."""
    box: queue.Queue = queue.Queue(maxsize=1)
    t0 = time.perf_counter()

    def work():
        box.put(tb.call_safe(tool, arguments, "agent"))

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    try:
        res = box.get(timeout=timeout)
    except queue.Empty:
        _STRAGGLERS.append(worker)
        return None, f"timeout: {tool} did not answer within {timeout:g} s", time.perf_counter() - t0
    if "error" in res:
        e = res["error"]
        return None, f"{e['kind']}: {e['message']}", time.perf_counter() - t0
    return res["result"], None, time.perf_counter() - t0


def _short(obj: Any, limit: int = 1500) -> Any:
    text = json.dumps(obj, default=str)
    return obj if len(text) <= limit else text[:limit] + " ..."


# --- planners -----------------------------------------------------------------------------------------
def fixed_plan(wf: Workflow, tb: Toolbox, case_id: str, order: list[int], fill=None) -> tuple[dict[str, Any], list[dict]]:
    """Each evidence of the file, in ``order``: its value and the recorded steps. ``fill(tool, arguments,
    case_id)`` puts the case into the arguments (default: ``case_id`` for a cohort's case)."""
    fill = fill or _with_case
    values, steps, done = {}, [], {}
    for i in order:
        ev = wf.evidence[i]
        args = fill(ev.tool, ev.arguments, case_id)
        key = json.dumps([ev.tool, args], sort_keys=True, default=str)
        reused = key in done  # several evidence values read from one call: the tool is called once
        out, err, secs = done[key] if reused else call_with_timeout(tb, ev.tool, args, wf.timeout_s)
        done[key] = (out, err, secs)
        v = read_value(ev.value, out, wf.positive) if out is not None else None
        if out is not None and v is None and not _may_be_absent(ev.value, out):
            err = f"value {ev.value!r} not found in the output of {ev.tool}"
        values[ev.name] = v
        steps.append({"evidence": ev.name, "tool": ev.tool, "arguments": deidentify_arguments(args),
                      "output": _short(out), "value": v, "seconds": 0.0 if reused else round(secs, 4),
                      "error": err, **({"reused": True} if reused else {})})
    return values, steps


def _may_be_absent(expr: str, output: Any) -> bool:
    """The output holds the path with a null value: the tool says the evidence does not apply
    (e.g. a question that names no modality), which is not an error."""
    if _CALL.match(expr):
        return False
    node = output
    for part in expr.strip().split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return node is None


def _with_case(tool: str, arguments: dict, case_id: str) -> dict:
    args = dict(arguments)
    if "case_id" in TOOLS[tool].args.model_fields:
        args["case_id"] = case_id
    return args


PLANNER_PROMPT = """You gather evidence to answer: {question}
Tools (call one per message):
{tools}
Reply with one JSON object only, for example {{"tool": "{first}", "arguments": {{}}}}.
The case is chosen for you (case_id is filled in). Reply {{"tool": "finish"}} when you have enough evidence."""


def parse_tool_call(text: str) -> tuple[str | None, dict, str | None]:
    """(tool, arguments, error) from a model's reply: the first JSON object in it."""
    m = re.search(r"\{.*\}", text or "", re.S)
    if not m:
        return None, {}, "no JSON object in the reply: reply with {\"tool\": NAME, \"arguments\": {...}}"
    raw = m.group(0)
    for end in range(len(raw), 0, -1):  # the longest prefix that parses (models add trailing text)
        if raw[end - 1] != "}":
            continue
        try:
            obj = json.loads(raw[:end])
            break
        except json.JSONDecodeError:
            continue
    else:
        return None, {}, "the reply's JSON does not parse: reply with {\"tool\": NAME, \"arguments\": {...}}"
    if not isinstance(obj, dict) or not isinstance(obj.get("tool", obj.get("name")), str):
        return None, {}, "the JSON object needs a string field \"tool\""
    args = obj.get("arguments", obj.get("parameters", {}))
    if not isinstance(args, dict):
        return None, {}, "\"arguments\" must be a JSON object"
    return obj.get("tool", obj.get("name")), args, None


def llm_plan(wf: Workflow, tb: Toolbox, llm, case_id: str, rollout: int, fill=None,
             question: str | None = None) -> tuple[dict[str, Any], list[dict]]:
    """A model picks tools step by step; evidence values are read from the calls of the file's tools
    (with the file's arguments as defaults under the model's). Bounded by ``planner.max_steps``.
    ``question``: the case's own question (cases: questions), shown instead of the file's."""
    from ..generate import GenParams

    fill = fill or _with_case
    question = question or wf.question
    by_tool: dict[str, list[Evidence]] = {}
    for ev in wf.evidence:
        by_tool.setdefault(ev.tool, []).append(ev)
    tools = sorted(by_tool)
    if rollout % 2:  # a different prompt per rollout: the tool list in another order
        tools = tools[::-1]
    listing = "\n".join(f"- {t}: {TOOLS[t].description}" for t in tools)
    msgs = [{"role": "system", "content": PLANNER_PROMPT.format(question=question, tools=listing, first=tools[0])},
            {"role": "user", "content": f"Question: {question}\nWhich tool first?"}]
    values: dict[str, Any] = {ev.name: None for ev in wf.evidence}
    steps: list[dict] = []
    params = GenParams(max_tokens=wf.planner.backend.max_tokens, temperature=0.0, seed=rollout)
    for step in range(wf.planner.max_steps):
        t0 = time.perf_counter()
        try:
            reply = llm.generate(msgs, params).text
        except Exception as exc:  # noqa: BLE001 - a backend failure ends the plan, recorded
            steps.append({"planner_step": step, "tool": None, "error": f"planner backend: {exc}",
                          "seconds": round(time.perf_counter() - t0, 4)})
            break
        tool, args, err = parse_tool_call(reply)
        rec: dict[str, Any] = {"planner_step": step, "reply": reply[:400], "tool": tool,
                               "llm_seconds": round(time.perf_counter() - t0, 4)}
        if err is None and tool == "finish":
            steps.append(rec)
            break
        if err is None and tool not in TOOLS:
            err = f"unknown tool {tool!r}; tools: {', '.join(tools)}, or finish"
        if err is None:
            evs = by_tool.get(tool, [])
            call_args = fill(tool, {**(evs[0].arguments if evs else {}), **args}, case_id)
            out, err, secs = call_with_timeout(tb, tool, call_args, wf.timeout_s)
            rec.update(arguments=deidentify_arguments(call_args), output=_short(out), seconds=round(secs, 4))
            for ev in evs:
                if out is not None and values[ev.name] is None:
                    values[ev.name] = read_value(ev.value, out, wf.positive)
            feedback = err or json.dumps(_short(out, 600), default=str)
        else:
            feedback = err
        rec["error"] = err
        steps.append(rec)
        msgs += [{"role": "assistant", "content": reply[:400]},
                 {"role": "user", "content": ("Error: " if err else "Result: ") + str(feedback)
                  + "\nNext tool, or {\"tool\": \"finish\"}?"}]
    return values, steps


# --- deciders -----------------------------------------------------------------------------------------
def _logit(p: float | None) -> float:
    if p is None:
        return 0.0  # absent evidence: no push either way (its own indicator carries the rest)
    p = min(max(float(p), 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


def features(wf: Workflow, values: dict[str, Any]) -> np.ndarray:
    """logit(value) and an absent indicator per evidence."""
    out = []
    for ev in wf.evidence:
        v = values.get(ev.name)
        out += [_logit(v), 1.0 if v is None else 0.0]
    return np.array(out)


C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)


def fit_logistic(X: np.ndarray, y: np.ndarray, C: float, w0: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """(weights, intercept) minimising C * sum(log loss) + |w - w0|^2 / 2 (the intercept is not penalised):
    sklearn's L2 logistic regression when ``w0`` is 0, pulled toward ``w0`` otherwise."""
    from scipy.optimize import minimize

    X, y = np.asarray(X, float), np.asarray(y, float)
    w0 = np.zeros(X.shape[1]) if w0 is None else np.asarray(w0, float)

    def loss(theta):
        w, b = theta[:-1], theta[-1]
        z = X @ w + b
        ll = np.logaddexp(0.0, z) - y * z
        g = 1.0 / (1.0 + np.exp(-z)) - y
        d = w - w0
        return C * ll.sum() + 0.5 * d @ d, np.concatenate([C * X.T @ g + d, [C * g.sum()]])

    p = min(max(y.mean(), 1e-3), 1 - 1e-3)
    start = np.concatenate([w0, [math.log(p / (1 - p)) - float(X.mean(0) @ w0)]])
    res = minimize(loss, start, jac=True, method="L-BFGS-B", options={"maxiter": 2000})
    return res.x[:-1], float(res.x[-1])


def _proba(X: np.ndarray, w: np.ndarray, b: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(np.atleast_2d(X) @ w + b)))


class WeightedDecider:
    """Logistic regression over the evidence features, fitted on a validation split; rollout r uses the
    weights fitted on bootstrap resample r of that split (rollout 0: the full split). The penalty pulls
    the weights toward ``decider.prior`` (0 where it names nothing) with strength 1/C; ``C: cv`` picks C
    from ``C_GRID`` by log loss in cross-validation grouped by ``groups`` (patients, pictures)."""

    def __init__(self, wf: Workflow):
        self.wf, self.models, self.info = wf, [], {}

    def _w0(self) -> np.ndarray:
        return np.array([self.wf.decider.prior.get(ev.name, 0.0) if suffix == "" else 0.0
                         for ev in self.wf.evidence for suffix in ("", " absent")])

    def choose_C(self, X: np.ndarray, y: np.ndarray, groups=None) -> tuple[float, dict[str, float]]:
        """C of the grid with the lowest mean held-out log loss (ties: the smaller C, nearer the prior)."""
        from sklearn.model_selection import StratifiedGroupKFold

        k = int(min(5, np.bincount(y).min()))
        if k < 2:
            return 1.0, {}
        groups = np.arange(len(y)) if groups is None else np.asarray(groups)
        folds = list(StratifiedGroupKFold(k, shuffle=True, random_state=self.wf.rollouts.seed).split(X, y, groups))
        scores = {}
        for C in C_GRID:
            losses = []
            for tr, te in folds:
                if len(set(y[tr].tolist())) < 2:
                    continue
                w, b = fit_logistic(X[tr], y[tr], C, self._w0())
                q = np.clip(_proba(X[te], w, b), 1e-6, 1 - 1e-6)
                losses.append(-(y[te] * np.log(q) + (1 - y[te]) * np.log(1 - q)))
            scores[C] = float(np.concatenate(losses).mean()) if losses else float("inf")
        best = min(scores.values())
        return min(C for C, v in scores.items() if v <= best + 1e-9), {str(C): round(v, 4) for C, v in scores.items()}

    def fit(self, X: np.ndarray, y: np.ndarray, groups=None) -> "WeightedDecider":
        X, y = np.asarray(X, float), np.asarray(y, int)
        if len(set(y.tolist())) < 2:
            raise WorkflowError(f"decider.fit_on {self.wf.decider.fit_on!r}: the split needs both answers to fit "
                                f"weights; it has {len(y)} case(s), all {y[0] if len(y) else '-'}")
        cv = {}
        C = self.wf.decider.C
        if C == "cv":
            C, cv = self.choose_C(X, y, groups)
        rng = np.random.default_rng(self.wf.rollouts.seed)
        self.models = []
        for r in range(self.wf.rollouts.n):
            idx = np.arange(len(y)) if r == 0 else rng.integers(0, len(y), len(y))
            while len(set(y[idx].tolist())) < 2:
                idx = rng.integers(0, len(y), len(y))
            self.models.append(fit_logistic(X[idx], y[idx], C, self._w0()))
        names = [f"{ev.name}{suffix}" for ev in self.wf.evidence for suffix in ("", " absent")]
        self.info = {"fitted_on": self.wf.decider.fit_on, "cases": int(len(y)),
                     "weights": dict(zip(names, map(float, self.models[0][0]))),
                     "intercept": float(self.models[0][1]), "C": C,
                     "prior": dict(self.wf.decider.prior), **({"cv_log_loss": cv} if cv else {})}
        return self

    def decide(self, values: dict[str, Any], rollout: int, question: str | None = None) -> tuple[bool, float, dict]:
        w, b = self.models[rollout % len(self.models)]
        p = float(_proba(features(self.wf, values)[None], w, b)[0])
        return p >= self.wf.decider.threshold, p, {"probability": p}


DECIDER_PROMPT = ("Question: {question}\nEvidence from medical AI tools (probability that the answer is yes, "
                  "0 to 1):\n{evidence}\nAnswer the question with one word: yes or no.")


class LLMDecider:
    """A model reads the evidence values and answers yes or no; rollouts list the evidence in other orders."""

    def __init__(self, wf: Workflow, llm):
        self.wf, self.llm, self.info = wf, llm, {"backend": llm.name}

    def decide(self, values: dict[str, Any], rollout: int, question: str | None = None
               ) -> tuple[bool | None, float | None, dict]:
        from ..generate import GenParams

        names = list(values)
        rng = np.random.default_rng(self.wf.rollouts.seed + rollout)
        if rollout:
            names = [names[i] for i in rng.permutation(len(names))]
        lines = "\n".join(f"- {n}: {'absent' if values[n] is None else f'{values[n]:.2f}'}" for n in names)
        prompt = DECIDER_PROMPT.format(question=question or self.wf.question, evidence=lines)
        t0 = time.perf_counter()
        reply = self.llm.generate([{"role": "user", "content": prompt}],
                                  GenParams(max_tokens=8, temperature=0.0, seed=rollout)).text
        word = re.findall(r"\b(yes|no)\b", reply.lower())
        answer = None if not word else word[0] == "yes"
        return answer, None, {"reply": reply[:200], "llm_seconds": round(time.perf_counter() - t0, 4)}


# --- cases ----------------------------------------------------------------------------------------
class CohortCases:
    """The cases of the toolbox's fusion model cohort (``cases: cohort``): tools get ``case_id``."""

    kind = "cohort"

    def __init__(self, wf: Workflow, tb: Toolbox):
        if tb.ctx is None:
            raise WorkflowError("workflows run over the cases of a fusion model's cohort: give --model DIR")
        if wf.target and wf.target not in tb.ctx.cohort.targets:
            raise WorkflowError(f"target {wf.target!r} is not a target of the model's cohort; targets: "
                                f"{', '.join(tb.ctx.cohort.targets)}")
        self.wf, self.tb = wf, tb

    def ids(self, split: str | None) -> list[str]:
        tab = self.tb.ctx.cohort.table
        ids = [c for c, s in zip(self.tb.ctx.dataset.case_ids, tab["split"]) if split is None or s == split]
        if not ids:
            raise WorkflowError(f"split {split!r} has no cases; splits: {', '.join(sorted(set(tab['split'])))}")
        return ids

    def truth(self, case_id: str) -> bool | None:
        if not self.wf.target:
            return None
        from ..cohort import is_missing

        v = self.tb.ctx.cohort.table[self.wf.target].iloc[self.tb.ctx.row(case_id)]
        if is_missing(v):
            return None
        return bool(v == self.wf.positive) or (isinstance(v, (int, float, np.number)) and
                                               float(v) == float(self.wf.positive))

    def group(self, case_id: str) -> str:
        return str(self.tb.ctx.cohort.table["patient_id"].iloc[self.tb.ctx.row(case_id)])

    def check(self, case_id: str) -> None:
        self.tb.check_case(case_id)

    def fill(self, tool: str, arguments: dict, case_id: str) -> dict:
        return _with_case(tool, arguments, case_id)

    def question(self, case_id: str) -> str | None:
        return None


PICTURE_ARGS = ("case_id", "item_id", "image_base64")


class QuestionCases:
    """Questions about pictures (``cases: questions``), read from question files in the VQA-RAD layout,
    one per split name. A case is one question: a tool that takes a picture gets the case's picture
    (``image_base64``) unless the evidence names one, a tool that takes ``question`` gets the case's
    question unless the evidence sets it, and ``{question}`` in a string argument is replaced by it.
    The truth is whether the reference answer (normalised) is ``positive`` ("yes"); a question whose
    reference is neither yes nor no has none (it is not a yes/no question)."""

    kind = "questions"

    def __init__(self, wf: Workflow, splits: dict[str, Any]):
        from ..vqa.data import VqaSet, load_vqa

        self.wf, self.rows, self.by_split = wf, {}, {}
        for split, data in splits.items():
            vqa = data if isinstance(data, VqaSet) else load_vqa(data)
            ids = []
            for i, q in enumerate(vqa.questions):
                cid = f"{split}:{q.qid if q.qid is not None else i}"
                if cid in self.rows:
                    raise WorkflowError(f"{vqa.source}: question id {q.qid!r} appears twice (split {split})")
                self.rows[cid] = (q, vqa.images_dir / q.image)
                ids.append(cid)
            self.by_split[split] = ids
        self._pictures: dict[Path, str] = {}

    def ids(self, split: str | None) -> list[str]:
        if split is None:
            return list(self.rows)
        if split not in self.by_split or not self.by_split[split]:
            raise WorkflowError(f"split {split!r} has no questions; splits: {', '.join(self.by_split) or '(none)'}")
        return list(self.by_split[split])

    def truth(self, case_id: str) -> bool | None:
        from ..vqa.normalize import normalize_answer

        ans = self.rows[case_id][0].norm_answer
        pos = normalize_answer(self.wf.positive)
        if ans not in ("yes", "no") and ans != pos:
            return None
        return ans == pos

    def group(self, case_id: str) -> str:
        return self.rows[case_id][0].image  # questions about one picture stay on one side of a fold

    def check(self, case_id: str) -> None:
        if case_id not in self.rows:
            raise ToolError(f"unknown case {case_id!r}; {len(self.rows)} questions are known, e.g. "
                            f"{', '.join(list(self.rows)[:3])}", "not_found", "case_id")

    def picture(self, case_id: str) -> str:
        import base64

        path = self.rows[case_id][1]
        if path not in self._pictures:
            if len(self._pictures) > 512:
                self._pictures.clear()
            self._pictures[path] = base64.b64encode(path.read_bytes()).decode()
        return self._pictures[path]

    def fill(self, tool: str, arguments: dict, case_id: str) -> dict:
        q = self.rows[case_id][0]
        fields = TOOLS[tool].args.model_fields
        args = {k: v.replace("{question}", q.question) if isinstance(v, str) else v for k, v in arguments.items()}
        if "image_base64" in fields and not any(k in args for k in PICTURE_ARGS):
            args["image_base64"] = self.picture(case_id)
        if "question" in fields and "question" not in args:
            args["question"] = q.question
        return args

    def question(self, case_id: str) -> str | None:
        return self.rows[case_id][0].question


# --- running ----------------------------------------------------------------------------------------
class Runner:
    """Runs a workflow over cases: a toolbox's cohort (default), or ``cases`` (``QuestionCases``)."""

    def __init__(self, wf: Workflow, tb: Toolbox, planner_llm=None, decider_llm=None, cases=None):
        if cases is None and wf.cases == "questions":
            raise WorkflowError("cases: questions: give the question files (--questions FILE)")
        self.source = cases if cases is not None else CohortCases(wf, tb)
        self.wf, self.tb = wf, tb
        self.planner_llm = planner_llm or (_backend(wf.planner.backend) if wf.planner.kind == "llm" else None)
        dec_llm = decider_llm or (_backend(wf.decider.backend) if wf.decider.kind == "llm" else None)
        self.decider = LLMDecider(wf, dec_llm) if wf.decider.kind == "llm" else WeightedDecider(wf)

    def truth(self, case_id: str) -> bool | None:
        return self.source.truth(case_id)

    def cases(self, split: str | None = None, limit: int | None = None, seed: int = 0) -> list[str]:
        ids = self.source.ids(split)
        if self.wf.target:
            ids = [c for c in ids if self.truth(c) is not None]
        if limit is not None and limit < len(ids):
            rng = np.random.default_rng(seed)
            ids = sorted(rng.choice(ids, limit, replace=False).tolist(), key=ids.index)
        return ids

    def gather(self, case_id: str, rollout: int) -> tuple[dict[str, Any], list[dict]]:
        if self.wf.planner.kind == "llm":
            return llm_plan(self.wf, self.tb, self.planner_llm, case_id, rollout, self.source.fill,
                            self.source.question(case_id))
        order = list(range(len(self.wf.evidence)))
        if rollout:  # another tool order per rollout
            order = np.random.default_rng(self.wf.rollouts.seed + rollout).permutation(order).tolist()
        return fixed_plan(self.wf, self.tb, case_id, order, self.source.fill)

    def fit(self, limit: int | None = None, progress: bool = False, case_ids: list[str] | None = None,
            values: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """Fit the weighted decider on ``decider.fit_on`` (or on ``case_ids``), from evidence gathered
        by the fixed plan (or given as ``values``: case id -> evidence values)."""
        if not isinstance(self.decider, WeightedDecider):
            return {}
        ids = case_ids if case_ids is not None else self.cases(self.wf.decider.fit_on, limit)
        X, y = [], []
        for cid in _progress(ids, f"fitting weights on {self.wf.decider.fit_on}", progress):
            v = values[cid] if values is not None else \
                fixed_plan(self.wf, self.tb, cid, list(range(len(self.wf.evidence))), self.source.fill)[0]
            X.append(features(self.wf, v))
            y.append(int(self.truth(cid)))
        self.decider.fit(np.array(X), np.array(y), [self.source.group(c) for c in ids])
        if case_ids is not None:
            self.decider.info["fitted_on"] = f"{len(ids)} given cases"
        return self.decider.info

    def run_case(self, case_id: str) -> dict[str, Any]:
        self.source.check(case_id)
        t0 = time.perf_counter()
        rollouts = []
        question = self.source.question(case_id)
        for r in range(self.wf.rollouts.n):
            values, steps = self.gather(case_id, r)
            answer, prob, extra = self.decider.decide(values, r, question)
            rollouts.append({"rollout": r, "values": values, "answer": answer, "probability": prob,
                             "decider": extra, "steps": steps})
        votes = [ro["answer"] for ro in rollouts if ro["answer"] is not None]
        yes = sum(votes)
        majority = None if not votes or yes * 2 == len(votes) else yes * 2 > len(votes)
        agreement = (max(yes, len(votes) - yes) / len(rollouts)) if votes else 0.0
        abstain = majority is None or agreement < self.wf.rollouts.abstain_below
        probs = [ro["probability"] for ro in rollouts if ro["probability"] is not None]
        truth = self.truth(case_id)
        return {"case_id": case_id, **({"question": question} if question else {}),
                "answer": None if abstain else ("yes" if majority else "no"),
                "majority": None if majority is None else ("yes" if majority else "no"),
                "abstained": abstain, "agreement": agreement,
                "probability": float(np.mean(probs)) if probs else None,
                "evidence": rollouts[0]["values"], "truth": None if truth is None else ("yes" if truth else "no"),
                "steps": sum(1 for ro in rollouts for st in ro["steps"] if not st.get("reused")),
                "seconds": round(time.perf_counter() - t0, 4), "rollouts": rollouts}

    def run(self, case_ids: list[str], progress: bool = False) -> dict[str, Any]:
        t0 = time.perf_counter()
        fit = self.fit(progress=progress) if isinstance(self.decider, WeightedDecider) and not self.decider.models \
            else self.decider.info
        records = [self.run_case(c) for c in _progress(case_ids, f"{self.wf.name}", progress)]
        return {"workflow": self.wf.model_dump(mode="json"), "decider": fit, "records": records,
                "summary": summarise(records), "seconds": round(time.perf_counter() - t0, 3)}


def _backend(spec: BackendSpec):
    from ..generate import load_backend

    try:
        return load_backend(spec.kind, **spec.options)
    except Exception as exc:  # noqa: BLE001 - unknown kind, bad option, missing file: said plainly
        raise WorkflowError(f"backend {spec.kind}: {exc}") from None


def _progress(items, label: str, show: bool):
    from ..progress import progress_bar

    with progress_bar(label, len(items), "cases", show) as advance:
        for it in items:
            yield it
            advance()


def summarise(records: list[dict], n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Accuracy on answered cases, coverage, accuracy on all cases (an abstention counts as wrong) and the
    rollouts' majority's accuracy on all cases (abstentions ignored), with 95% bootstrap intervals; steps
    and seconds per case."""
    from ..evaluate.metrics import bootstrap_ci

    scored = [r for r in records if r["truth"] is not None]
    out: dict[str, Any] = {"cases": len(records), "steps_per_case": float(np.mean([r["steps"] for r in records]))
                           if records else None,
                           "seconds_per_case": float(np.mean([r["seconds"] for r in records])) if records else None,
                           "mean_agreement": float(np.mean([r["agreement"] for r in records])) if records else None}
    if not scored:
        return out
    answered = np.array([not r["abstained"] for r in scored])
    correct_all = np.array([float(r["answer"] == r["truth"]) for r in scored])  # an abstention is wrong
    out["accuracy_majority"] = _ci(np.array([float(r["majority"] == r["truth"]) for r in scored]), bootstrap_ci,
                                   n_boot, seed)
    correct_answered = np.array([float(r["answer"] == r["truth"]) for r in scored if not r["abstained"]])
    out["coverage"] = _ci(answered.astype(float), bootstrap_ci, n_boot, seed)
    out["accuracy_answered"] = _ci(correct_answered, bootstrap_ci, n_boot, seed) if len(correct_answered) else None
    out["accuracy_all"] = _ci(correct_all, bootstrap_ci, n_boot, seed)
    return out


def _ci(x: np.ndarray, bootstrap_ci, n_boot: int, seed: int) -> dict[str, float]:
    lo, hi = bootstrap_ci(x, x, lambda a, _: float(np.mean(a)), False, n_boot, seed) if len(x) > 1 else (x[0], x[0])
    return {"value": float(np.mean(x)), "lo": float(lo), "hi": float(hi), "n": int(len(x))}
