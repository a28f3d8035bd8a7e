"""Any language model drafts an impression with retrieved examples in its prompt, through one of the
``medweave.generate`` backends (an OpenAI-compatible server such as vLLM, Ollama or the llama.cpp
server; a local GGUF; a local Hugging Face folder).

The prompt: an instruction, then the k most similar training reports as earlier turns (their
findings as the user's turn, their impression as the assistant's), then the findings to summarise.
The draft cites the k examples it was shown. The reply is cleaned: leading "Impression:" dropped,
cut at the first blank line; an empty reply or a backend failure falls back to the consensus of the
same neighbours (said in ``kind``), so a file of drafts is never half-written.

``DrafterBackend`` (backend kind ``drafter``, registered through the ``medweave.backends`` entry
point) turns any fitted drafter folder — with or without an LLM behind it — into a backend, so the
harness (``medweave eval run --task openi-summ --backend drafter --model DIR``) scores drafters and
LLMs on the same task with the same metrics.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from pydantic import Field

from ..generate import Backend, BackendError, BackendOptions, GenParams, Generation, Message
from ..retrieve.kb import Scope
from .impression import TRAIN, Consensus, Draft, ImpressionDrafter, _source

INSTRUCTION = ("You write the IMPRESSION section of chest X-ray reports. Summarise the findings in the "
               "radiologist's style: one or two short sentences, only what the findings support. Reply "
               "with the impression only.")


def clean_reply(text: str) -> str:
    t = (text or "").strip()
    t = re.sub(r"^\s*(?:impression|summary)\s*:\s*", "", t, flags=re.I)
    t = re.split(r"\n\s*\n", t, maxsplit=1)[0].strip()
    return t.strip('"').strip()


class RetrievalPromptDrafter(ImpressionDrafter):
    """An LLM given the k most similar training reports as in-context examples."""

    name = "llm"

    def __init__(self, backend: Backend | None = None, k: int = 4, text_index: str = "tfidf",
                 max_tokens: int = 96, instruction: str = INSTRUCTION, **kw):
        super().__init__(k=k, text_index=text_index, **kw)
        self.backend, self.max_tokens, self.instruction = backend, max_tokens, instruction

    def params(self):
        return {**super().params(), "max_tokens": self.max_tokens}

    def messages(self, findings: str, hits: list[dict[str, Any]]) -> list[Message]:
        msgs = [Message("system", [self.instruction])]
        for h in reversed(hits):  # the most similar example closest to the question
            msgs.append(Message("user", [f"Findings: {h['entry'].text}"]))
            msgs.append(Message("assistant", [h["entry"].fields["impression"]]))
        msgs.append(Message("user", [f"Findings: {findings}"]))
        return msgs

    def draft(self, findings: Sequence[str], scopes: Sequence[Scope] | None = None) -> list[Draft]:
        if self.backend is None:
            raise ValueError("the llm drafter needs a backend (medweave.generate.load_backend(...))")
        out = []
        params = GenParams(temperature=0.0, max_tokens=self.max_tokens, stop=("\n\n",))
        for f, hits in zip(findings, self.neighbours(findings, scopes)):
            sources = [_source(h, "in-context example") for h in hits]
            try:
                text = clean_reply(self.backend.generate(self.messages(f, hits), params).text)
                kind = "llm"
            except BackendError as exc:
                text, kind = "", f"fallback: backend failed ({exc.kind})"
            if not text:
                text = _consensus_text(hits)
                kind = kind if kind != "llm" else "fallback: empty reply"
            out.append(Draft(text, sources, self.name, kind))
        return out


def _consensus_text(hits: list[dict[str, Any]]) -> str:
    c = Consensus(k=len(hits))
    imps = [h["entry"].fields["impression"] for h in hits]
    from .impression import _consensus_scores, _weights
    from .text import rouge_tokens

    toks = [rouge_tokens(t) for t in imps]
    scores = _consensus_scores(toks, toks, _weights(hits, c.power))
    return imps[int(scores.argmax())]


# --- a drafter folder as a backend ----------------------------------------------------------------

class DrafterOptions(BackendOptions):
    model: str = Field(description="A `medweave draft fit` folder (its knowledge base and method).")
    llm: str | None = Field(None, description="Draft with this backend kind given retrieved examples instead "
                                               "(openai, llama-cpp, transformers).")
    llm_model: str | None = Field(None, description="The LLM backend's model option (GGUF file, folder, name).")
    llm_base_url: str | None = Field(None, description="The openai backend's base URL (up to /v1).")
    k: int = Field(4, ge=1, le=64, description="Retrieved examples in the LLM's prompt.")


_FINDINGS = re.compile(r"findings\s*:\s*(.*?)(?:\n\s*impression\s*:.*)?$", re.I | re.S)


class DrafterBackend(Backend):
    """A drafter answers the harness: the findings are read from the last user turn (the text after
    "Findings:", else the whole turn); the draft is the reply, its sources in ``extra``."""

    kind = "drafter"
    Options = DrafterOptions

    def __init__(self, **options: Any):
        super().__init__(**options)
        from ..generate import load_backend
        from .model import load_drafter

        self.drafter, self.meta = load_drafter(self.options.model)
        if self.options.llm:
            llm_opts = {k: v for k, v in {"model": self.options.llm_model,
                                          "base_url": self.options.llm_base_url}.items() if v is not None}
            inner = load_backend(self.options.llm, **llm_opts)
            llm = RetrievalPromptDrafter(inner, k=self.options.k)
            llm.kb = self.drafter.kb
            self.drafter = llm
            self.inner = inner
        else:
            self.inner = None

    @property
    def name(self) -> str:
        base = f"drafter:{self.drafter.name}"
        return f"{base}+{self.inner.name}" if self.inner is not None else base

    def fingerprint(self) -> str:
        inner = self.inner.fingerprint() if self.inner is not None else ""
        return f"drafter|{self.meta.get('train', {}).get('sha256', '')}|{self.drafter.name}|" \
               f"{sorted(self.drafter.params().items())}|{inner}"

    def _generate(self, messages: list[Message], params: GenParams) -> Generation:
        users = [m for m in messages if m.role == "user"]
        if not users:
            raise BackendError("the drafter backend needs a user turn with the findings", "input")
        text = users[-1].text
        m = _FINDINGS.search(text)
        findings = (m.group(1) if m else text).strip()
        if not findings:
            raise BackendError("no findings text in the request", "input")
        d = self.drafter.draft([findings])[0]
        return Generation(d.text, finish_reason="stop", extra={"sources": d.sources, "kind": d.kind})

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()
