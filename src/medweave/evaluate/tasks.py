"""Tasks are data: a YAML or TOML file says which layout to read, where the files are, the prompt,
how an answer is extracted, which metrics are reported and what statistics cluster by. No code.

```yaml
name: vqa-rad-testlike
layout: vqa-rad                      # see medweave.evaluate.samples.LAYOUTS
data: ${MEDWEAVE_DATA}/vqa-rad/trainset.json
images: ${MEDWEAVE_DATA}/vqa-rad/images      # optional (default: images/ or imgs/ beside the data)
split: {name: testlike, side: held, frac: 0.15, seed: 0}   # optional: one side of a medweave.vqa split
prompt: "{question}"                 # fields: question, options, letters, findings, any metadata field
system: null                         # optional system prompt
image_position: before               # the image part before or after the text (none: not sent)
extract: auto                        # see medweave.evaluate.extract.EXTRACTORS
metrics: [overall_acc, closed_acc, open_acc, closed_acc_yesno, open_recall]
breakdown: [question_type, organ]    # metadata fields whose values get their own overall score
generation: {max_tokens: 32}         # temperature 0 unless said
probes: {paired: {facts_from: ${MEDWEAVE_DATA}/vqa-rad/trainset.json}}
context: {kind: retrieved, k: 3}     # optional: similar training QA pairs in each prompt (evaluate.context)
```

``${VAR}`` expands from the environment (``${MEDWEAVE_DATA}`` defaults to the shared data folder);
a relative path is relative to the task file. An unknown key, layout, metric, extractor, split or
probe is a ``TaskError`` naming it and the allowed values. ``TASKS`` lists the task files shipped in
``medweave/evaluate/tasks/``; a user adds a task by writing a file and passing its path.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..settings import shared_data_dir
from .samples import LAYOUTS, Sample, TaskError

TASK_DIR = Path(__file__).parent / "tasks"
PROBES = ("image", "paired", "prompt", "fewshot")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SplitSpec(_Strict):
    name: str = "testlike"
    side: Literal["held", "train"] = "held"
    frac: float = Field(0.15, gt=0, lt=1)
    seed: int = 0

    @field_validator("name")
    @classmethod
    def _known(cls, v):
        from ..vqa.splits import SPLITS

        if v not in SPLITS:
            raise ValueError(f"unknown split {v!r}; allowed values: {', '.join(SPLITS)}")
        return v


class ContextSpec(_Strict):
    """Retrieved context (``medweave.evaluate.context``): the k most similar training question-answer
    pairs in each prompt; ``from``: the training file (default: the other side of the task's split)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    kind: Literal["retrieved"] = "retrieved"
    k: int = Field(3, ge=1, le=50)
    from_: Optional[str] = Field(None, alias="from")
    images: Optional[str] = None
    embeddings: Optional[str] = None  # an embedding cache (default: RUN_DIR/context.duckdb)


class Task(_Strict):
    name: str
    description: str = ""
    layout: str
    data: str
    images: Optional[str] = None
    split: Optional[SplitSpec] = None
    filter: dict[str, str] = {}
    fields: dict[str, str] = {}
    prompt: str = "{question}"
    system: Optional[str] = None
    image_position: Literal["before", "after", "none"] = "before"  # none: the picture is not sent (text-only models)
    extract: str = "auto"
    metrics: list[str] = ["overall_acc"]
    breakdown: list[str] = []
    cluster: Literal["image", "sample"] = "image"
    generation: dict[str, Any] = {}
    probes: dict[str, dict[str, Any]] = {}
    context: Optional[ContextSpec] = None
    source: str = ""  # the file it was read from (set on load)

    @field_validator("layout", "extract", "metrics", "probes")
    @classmethod
    def _registered(cls, v, info):
        from .extract import EXTRACTORS
        from .sample_metrics import METRICS

        kind, allowed = {"layout": ("layout", LAYOUTS.names()), "extract": ("extractor", EXTRACTORS.names()),
                         "metrics": ("metric", METRICS.names()), "probes": ("probe", list(PROBES))}[info.field_name]
        names = [v] if isinstance(v, str) else list(v)
        bad = [n for n in names if n not in allowed]
        if bad:
            raise ValueError(f"unknown {kind} {bad[0]!r}; allowed values: {', '.join(allowed)}")
        if info.field_name == "metrics" and not names:
            raise ValueError("at least one metric is needed")
        return v

    @field_validator("generation")
    @classmethod
    def _generation(cls, v):
        from ..generate import GenParams

        GenParams.from_dict(v)
        return v

    def base_dir(self) -> Path:
        return Path(self.source).parent if self.source else Path.cwd()

    def path(self, value: str | None) -> Path | None:
        """A task path with ``${VAR}`` expanded, relative paths taken from the task file's folder."""
        if value is None:
            return None
        p = Path(expand(value))
        return p if p.is_absolute() else (self.base_dir() / p)

    def load_samples(self, data: str | Path | None = None, images: str | Path | None = None) -> list[Sample]:
        """The task's samples (``data`` / ``images`` point it at another file of the same layout)."""
        data_path = Path(data) if data is not None else self.path(self.data)
        images_path = Path(images) if images is not None else self.path(self.images)
        if data is not None and images is None and self.layout in ("vqa-rad", "slake", "pathvqa"):
            images_path = None  # a new file: its pictures are beside it unless --images says otherwise
        return LAYOUTS.get(self.layout)(self, data_path, images_path)

    def render(self, sample: Sample, template: str | None = None) -> str:
        try:
            return (template or self.prompt).format(**sample.fields())
        except KeyError as exc:
            raise TaskError(f"task {self.name}: prompt names the field {exc.args[0]!r}, which sample "
                            f"{sample.id} does not have; fields: {', '.join(sorted(sample.fields()))}") from None


def expand(value: str) -> str:
    def sub(m: re.Match) -> str:
        if m.group(1) == "MEDWEAVE_DATA":
            return os.environ.get("MEDWEAVE_DATA") or str(shared_data_dir())
        if m.group(1) not in os.environ:
            raise TaskError(f"${{{m.group(1)}}} is not set in the environment")
        return os.environ[m.group(1)]

    return _VAR.sub(sub, value)


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TaskError(f"{path}: not UTF-8 text (byte {exc.start} is {exc.object[exc.start:exc.start + 1]!r}); "
                        "a task file is YAML or TOML in UTF-8") from None
    try:
        if path.suffix == ".toml":
            return tomllib.loads(text)
        import yaml

        data = yaml.safe_load(text)
    except Exception as exc:  # yaml and toml errors alike: name the file
        raise TaskError(f"{path}: cannot be parsed as {path.suffix[1:].upper()}: {exc}") from None
    if not isinstance(data, dict):
        raise TaskError(f"{path}: a task file holds a mapping of keys (name, layout, data, ...)")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise TaskError(f"{path}: every key is a name; found the key {bad[0]!r} (a YAML '?' or a number as a key)")
    return data


def builtin_tasks() -> dict[str, Path]:
    """Task name -> file, for the task files shipped with medweave."""
    return {p.stem: p for p in sorted(TASK_DIR.glob("*.yaml")) + sorted(TASK_DIR.glob("*.toml"))}


def load_task(name_or_path: str | Path) -> Task:
    """A task by its shipped name (``medweave eval tasks``) or from a YAML/TOML file."""
    path = Path(name_or_path)
    if not path.is_file():
        shipped = builtin_tasks()
        if str(name_or_path) not in shipped:
            raise TaskError(f"unknown task {str(name_or_path)!r}: not a file, and not a shipped task; shipped: "
                            f"{', '.join(shipped)}")
        path = shipped[str(name_or_path)]
    raw = _read(path)
    try:
        return Task(**raw, source=str(path.resolve()))
    except ValidationError as exc:
        from ..config import validation_messages

        allowed = ", ".join(k for k in Task.model_fields if k != "source")
        msgs = validation_messages(exc)
        if any(m.startswith("unknown key") for m in msgs):
            msgs.append(f"allowed keys: {allowed} (split: {', '.join(SplitSpec.model_fields)}; context: kind, k, "
                        "from, images, embeddings)")
        raise TaskError(f"{path}: {'; '.join(msgs)}") from None
