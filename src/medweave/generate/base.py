"""The ``Backend`` interface: OpenAI-style chat messages in (text and image parts), text out with what
the backend knows (latency, token counts, log-probabilities where offered).

Backends are registered by name in ``BACKENDS`` (lazy imports: a backend's heavy library is imported
only when that backend is used); third-party packages add their own through the entry-point group
``medweave.backends``. Each backend declares its options as a pydantic model: an unknown option or a
bad value is an error naming the key and the allowed ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

from pydantic import BaseModel, ConfigDict, ValidationError

from ..registry import Registry
from .messages import Message, parse_messages


class BackendError(RuntimeError):
    """A request that did not give a usable completion.

    ``kind``: ``unreachable`` (no connection), ``timeout``, ``http`` (an error status, in ``status``),
    ``malformed`` (a reply that is not a completion), ``empty`` (a completion without text), ``input``
    (the request cannot be answered by this backend, e.g. an image for a text model), ``error``.
    ``retryable``: whether sending the same request again may succeed.
    """

    def __init__(self, message: str, kind: str = "error", retryable: bool = False, status: int | None = None):
        super().__init__(message)
        self.kind, self.retryable, self.status = kind, retryable, status


class OptionsError(ValueError):
    """Backend options that do not validate; the message names the key and the allowed ones."""


@dataclass(frozen=True)
class GenParams:
    """Sampling parameters, passed through to every backend. At ``temperature`` 0 a backend decodes
    greedily (deterministic where the server is)."""

    temperature: float = 0.0
    max_tokens: int = 64
    seed: int | None = 0
    stop: tuple[str, ...] = ()
    top_p: float | None = None
    logprobs: bool = False

    def as_dict(self) -> dict[str, Any]:
        d = {f: getattr(self, f) for f in self.__dataclass_fields__}  # flat values: no deep copy needed
        d["stop"] = list(self.stop)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "GenParams":
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise OptionsError(f"unknown generation parameter(s) {', '.join(sorted(unknown))}; allowed: "
                               f"{', '.join(cls.__dataclass_fields__)}")
        if "stop" in d:
            d["stop"] = tuple([d["stop"]] if isinstance(d["stop"], str) else d["stop"] or ())
        return cls(**d)


@dataclass
class Generation:
    """A completion: its text, and what the backend reports about it."""

    text: str
    latency_s: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    logprobs: list[dict[str, Any]] | None = None  # per generated token: {"token", "logprob"}
    finish_reason: str | None = None
    model: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # backend-specific (builtin: probability, type)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict, containers copied one level down (``dataclasses.asdict``'s recursive
        deep copy cost more per sample than the rest of the harness's bookkeeping)."""
        d = {f: getattr(self, f) for f in self.__dataclass_fields__}
        d["extra"] = dict(self.extra)
        if self.logprobs is not None:
            d["logprobs"] = [dict(t) if isinstance(t, dict) else t for t in self.logprobs]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Generation":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class BackendOptions(BaseModel):
    """Base of every backend's options: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Backend:
    """Base class. Subclasses set ``kind`` and ``Options`` and implement ``_generate`` and ``fingerprint``.

    ``max_concurrency``: how many requests the backend takes at once (the harness sends no more).
    ``supports_images``: whether image parts can be answered (a text-only backend refuses them with
    a ``BackendError`` of kind ``input``).
    """

    kind: ClassVar[str] = ""
    Options: ClassVar[type[BackendOptions]] = BackendOptions
    supports_images: bool = False
    max_concurrency: int = 1

    def __init__(self, **options: Any):
        self.options = validate_options(self.kind, self.Options, options)

    # -- the interface ---------------------------------------------------------------------------
    def generate(self, messages: Sequence[Message | dict], params: GenParams | None = None) -> Generation:
        """One completion for a conversation (``Message`` objects or OpenAI-style dicts)."""
        msgs = [m for m in messages] if messages and all(isinstance(m, Message) for m in messages) \
            else parse_messages(list(messages))
        if not self.supports_images and any(m.images for m in msgs):
            raise BackendError(f"the {self.kind} backend ({self.name}) answers text only: this request has an "
                               "image", "input")
        t0 = time.perf_counter()
        out = self._generate(msgs, params or GenParams())
        if not out.latency_s:
            out.latency_s = time.perf_counter() - t0
        out.model = out.model or self.name
        return out

    def _generate(self, messages: list[Message], params: GenParams) -> Generation:
        raise NotImplementedError

    @property
    def name(self) -> str:
        """A short display name (model file or model name)."""
        return self.kind

    def fingerprint(self) -> str:
        """What identifies the model and its settings (part of the response-cache key): the same
        fingerprint must mean the same answers for the same request."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "fingerprint": self.fingerprint(),
                "options": self.options.model_dump(mode="json", exclude=self._secret_options()),
                "supports_images": self.supports_images, "max_concurrency": self.max_concurrency}

    def _secret_options(self) -> set[str]:
        return set()

    def close(self) -> None:
        pass

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def validate_options(kind: str, model: type[BackendOptions], options: dict[str, Any]) -> BackendOptions:
    try:
        return model(**options)
    except ValidationError as exc:
        from ..config import validation_messages

        allowed = ", ".join(model.model_fields)
        parts = validation_messages(exc, "option", show_input=True)
        raise OptionsError(f"{kind} backend: {'; '.join(parts)}; allowed options: {allowed}") from None


BACKENDS: Registry[type[Backend]] = Registry("backend", "medweave.backends")
for _name, _path in {
    "builtin": "medweave.generate.builtin:BuiltinBackend",
    "openai": "medweave.generate.openai_http:OpenAIBackend",
    "llama-cpp": "medweave.generate.llama_cpp:LlamaCppBackend",
    "transformers": "medweave.generate.hf:TransformersBackend",
}.items():
    BACKENDS.register(_name, _path)


def load_backend(kind: str, **options: Any) -> Backend:
    """The backend registered as ``kind``, built with ``options`` (validated; errors name the key)."""
    return BACKENDS.get(kind)(**options)


def parse_option_pairs(pairs: Sequence[str]) -> dict[str, Any]:
    """``["key=value", ...]`` (the CLI's ``--opt``) as a dict; values stay strings (pydantic converts)."""
    out: dict[str, Any] = {}
    for p in pairs:
        if "=" not in p:
            raise OptionsError(f"backend option {p!r}: expected KEY=VALUE")
        k, v = p.split("=", 1)
        out[k.strip().replace("-", "_")] = v.strip()
    return out
