"""``llama-cpp``: a local GGUF file through ``llama-cpp-python`` (imported only when used).

Text models use the chat template stored in the GGUF (or ``chat_format``). Vision models need their
projector file (``mmproj``) and one of the library's multimodal chat handlers (``chat_handler``,
default ``llava-1-5``; the handler names are those of ``llama_cpp.llama_chat_format``); images are
passed as data URLs, which the handlers read. The vision path is written against the library's
handlers and is untested with real weights here (no vision GGUF can be had offline); image requests
to a text model are refused with a clear error.

``n_threads`` defaults to 1: with another job on the CPU, 2 threads were measured 30x slower than 1.
At temperature 0 llama.cpp decodes greedily, so the in-process model and ``python -m llama_cpp.server``
on the same file give the same text. ``logprobs`` needs ``logits_all`` (set ``logprobs=true``).
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

from pydantic import Field

from .base import Backend, BackendError, BackendOptions, GenParams, Generation
from .messages import Message, to_openai

CHAT_HANDLERS = {"llava-1-5": "Llava15ChatHandler", "llava-1-6": "Llava16ChatHandler",
                 "moondream": "MoondreamChatHandler", "nanollava": "NanoLlavaChatHandler",
                 "llama-3-vision-alpha": "Llama3VisionAlphaChatHandler", "minicpm-v-2.6": "MiniCPMv26ChatHandler",
                 "qwen2.5-vl": "Qwen25VLChatHandler", "gemma4": "Gemma4ChatHandler", "obsidian": "ObsidianChatHandler",
                 "mtmd": "MTMDChatHandler"}


class LlamaCppOptions(BackendOptions):
    model: Path = Field(description="The GGUF model file.")
    mmproj: Path | None = Field(None, description="Projector GGUF of a vision model (enables image parts).")
    chat_handler: str = Field("llava-1-5", description=f"Multimodal chat handler: {', '.join(CHAT_HANDLERS)}.")
    chat_format: str | None = Field(None, description="Override the GGUF's chat template (llama-cpp chat format).")
    n_ctx: int = Field(2048, ge=64)
    n_threads: int = Field(1, ge=1)
    n_batch: int = Field(512, ge=1)
    seed: int = Field(0, description="Seed of the model's sampler at load.")
    logprobs: bool = Field(False, description="Keep every token's logits so log-probabilities can be returned.")


def file_fingerprint(path: Path) -> str:
    """sha256 over size, first and last 4 MiB of a (possibly huge) file."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(4 << 20))
        if size > 8 << 20:
            fh.seek(-(4 << 20), os.SEEK_END)
            h.update(fh.read())
    return h.hexdigest()[:32]


class LlamaCppBackend(Backend):
    kind = "llama-cpp"
    Options = LlamaCppOptions

    def __init__(self, **options: Any):
        super().__init__(**options)
        o = self.options
        path = Path(o.model)
        if not path.is_file():
            raise BackendError(f"llama-cpp backend: GGUF file {path} not found", "input")
        try:
            import llama_cpp
        except ImportError as exc:
            raise BackendError(f"llama-cpp backend needs llama-cpp-python ({exc}); see README (build flags)",
                               "input") from None
        handler = None
        if o.mmproj is not None:
            if not Path(o.mmproj).is_file():
                raise BackendError(f"llama-cpp backend: projector file {o.mmproj} not found", "input")
            from llama_cpp import llama_chat_format

            cls_name = CHAT_HANDLERS.get(o.chat_handler)
            cls = getattr(llama_chat_format, cls_name, None) if cls_name else None
            if cls is None:
                have = [k for k, v in CHAT_HANDLERS.items() if hasattr(llama_chat_format, v)]
                raise BackendError(f"llama-cpp backend: chat_handler {o.chat_handler!r} is not available in this "
                                   f"llama-cpp-python; allowed values: {', '.join(have)}", "input")
            handler = cls(clip_model_path=str(o.mmproj), verbose=False)
        try:
            self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=o.n_ctx, n_threads=o.n_threads, n_batch=o.n_batch,
                                       seed=o.seed, verbose=False, logits_all=o.logprobs, chat_format=o.chat_format,
                                       chat_handler=handler)
        except (ValueError, RuntimeError) as exc:
            raise BackendError(f"llama-cpp backend: {path} cannot be loaded: {exc}", "input") from None
        self.path = path
        self.supports_images = handler is not None
        self._lock = threading.Lock()
        fp = file_fingerprint(path) + (":" + file_fingerprint(Path(o.mmproj)) if o.mmproj else "")
        self._fingerprint = f"llama-cpp:{fp}:{o.chat_format or 'gguf-template'}:{o.chat_handler if o.mmproj else ''}"

    @property
    def name(self) -> str:
        return self.path.stem

    def fingerprint(self) -> str:
        return self._fingerprint

    def _generate(self, messages: list[Message], params: GenParams) -> Generation:
        kw: dict[str, Any] = {"messages": to_openai(messages), "temperature": params.temperature,
                              "max_tokens": params.max_tokens, "stop": list(params.stop) or None}
        if params.seed is not None:
            kw["seed"] = params.seed
        if params.top_p is not None:
            kw["top_p"] = params.top_p
        if params.logprobs and self.options.logprobs:
            kw["logprobs"] = True
        with self._lock:
            try:
                data = self.llm.create_chat_completion(**kw)
            except ValueError as exc:  # e.g. the prompt does not fit n_ctx
                raise BackendError(f"llama-cpp backend ({self.path.name}): {exc}", "input") from None
        from .openai_http import parse_completion

        return parse_completion(data, str(self.path))

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.close()
