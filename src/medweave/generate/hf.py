"""``transformers``: a local Hugging Face model folder (``save_pretrained`` layout), never downloaded:
every load passes ``local_files_only=True`` and ``HF_HUB_OFFLINE`` is set before transformers is
imported. CPU by default.

A folder whose config has a ``vision_config`` is loaded as an image-text-to-text model
(``AutoModelForImageTextToText`` + ``AutoProcessor``: LLaVA, Qwen2-VL, Idefics, PaliGemma, ...);
any other as a causal language model (``AutoModelForCausalLM`` + ``AutoTokenizer``). The prompt is
the tokenizer's (or processor's) chat template; a tokenizer without one gets ``role: text`` lines.
At temperature 0 decoding is greedy; otherwise sampled with ``torch.manual_seed(seed)``.
Log-probabilities of the generated tokens come from the model's own scores.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

from pydantic import Field

from .base import Backend, BackendError, BackendOptions, GenParams, Generation
from .messages import Message


class TransformersOptions(BackendOptions):
    model: Path = Field(description="A local model folder (config.json, weights, tokenizer/processor files).")
    dtype: str = Field("float32", description="torch dtype to load the weights in (float32, bfloat16, float16).")
    device: str = Field("cpu", description="torch device.")
    threads: int = Field(1, ge=1, description="torch threads while generating.")


def _fingerprint(folder: Path) -> str:
    """sha256 over the folder's config/tokenizer files and, for weight files, name, size and the first
    and last MiB (hashing gigabytes of weights on every start would take minutes)."""
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if not p.is_file():
            continue
        h.update(p.name.encode())
        size = p.stat().st_size
        h.update(str(size).encode())
        with open(p, "rb") as fh:
            if size <= 4 << 20:
                h.update(fh.read())
            else:
                h.update(fh.read(1 << 20))
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()[:32]


class TransformersBackend(Backend):
    kind = "transformers"
    Options = TransformersOptions

    def __init__(self, **options: Any):
        super().__init__(**options)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        folder = Path(self.options.model)
        if not (folder / "config.json").is_file():
            raise BackendError(f"transformers backend: {folder} is not a local model folder (no config.json); "
                               "nothing is downloaded: pass the folder a model was saved to", "input")
        try:
            import torch
            import transformers
        except ImportError as exc:
            raise BackendError(f"transformers backend needs the transformers package ({exc}); "
                               "pip install 'medweave[hf]'", "input") from None
        self.folder = folder
        self._lock = threading.Lock()
        dtype = getattr(torch, self.options.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise BackendError(f"transformers backend: dtype {self.options.dtype!r} is not a torch dtype", "input")
        transformers.utils.logging.disable_progress_bar()
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
        self.vision = getattr(config, "vision_config", None) is not None
        self.supports_images = self.vision
        kw = {"local_files_only": True, "dtype": dtype}
        try:
            if self.vision:
                self.processor = transformers.AutoProcessor.from_pretrained(folder, local_files_only=True)
                self.tokenizer = self.processor.tokenizer
                self.model = transformers.AutoModelForImageTextToText.from_pretrained(folder, **kw)
            else:
                self.processor = None
                self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
                self.model = transformers.AutoModelForCausalLM.from_pretrained(folder, **kw)
        except (OSError, ValueError) as exc:
            raise BackendError(f"transformers backend: {folder} cannot be loaded: {exc}", "input") from None
        self.model.to(self.options.device).eval()
        self._fingerprint = _fingerprint(folder)

    @property
    def name(self) -> str:
        return self.folder.name

    def fingerprint(self) -> str:
        return f"transformers:{self._fingerprint}:{self.options.dtype}"

    def _chat(self, messages: list[Message]) -> tuple[list[dict], list]:
        """Messages in the processor's format (content parts, image placeholders) and the images in order."""
        from PIL import Image

        from .builtin import decode_picture

        chat, images = [], []
        for m in messages:
            if not self.vision:
                chat.append({"role": m.role, "content": m.text})
                continue
            parts = []
            for p in m.parts:
                if isinstance(p, str):
                    parts.append({"type": "text", "text": p})
                else:
                    arr = decode_picture(p)
                    images.append(Image.fromarray(arr).convert("RGB"))
                    parts.append({"type": "image"})
            chat.append({"role": m.role, "content": parts})
        return chat, images

    def _prompt(self, chat: list[dict]) -> str:
        templ = self.processor if self.vision else self.tokenizer
        if getattr(templ, "chat_template", None):
            return templ.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        lines = [f"{m['role']}: {m['content'] if isinstance(m['content'], str) else ' '.join(p.get('text', '') for p in m['content'])}"
                 for m in chat]
        return "\n".join(lines) + "\nassistant:"

    def _generate(self, messages: list[Message], params: GenParams) -> Generation:
        import torch

        from ..encode.text import torch_threads

        chat, images = self._chat(messages)
        prompt = self._prompt(chat)
        with self._lock, torch_threads(self.options.threads), torch.inference_mode():
            if self.vision:
                inputs = self.processor(text=prompt, images=images or None, return_tensors="pt")
            else:
                inputs = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
            inputs = {k: v.to(self.options.device) for k, v in inputs.items()}
            sample = params.temperature > 0
            kw: dict[str, Any] = {"max_new_tokens": params.max_tokens, "do_sample": sample,
                                  "return_dict_in_generate": True, "output_scores": True,
                                  "pad_token_id": self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None
                                  else self.tokenizer.eos_token_id}
            if sample:
                kw["temperature"] = params.temperature
                if params.top_p is not None:
                    kw["top_p"] = params.top_p
                torch.manual_seed(params.seed or 0)
            else:
                kw.update({"temperature": None, "top_p": None, "top_k": None})
            out = self.model.generate(**inputs, **kw)
            n_in = inputs["input_ids"].shape[1]
            new = out.sequences[0, n_in:]
            scores = self.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)[0]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        finish = "length" if len(new) >= params.max_tokens else "stop"
        for s in params.stop:
            if s and s in text:
                text, finish = text[:text.index(s)], "stop"
        lp = [{"token": self.tokenizer.decode([int(t)]), "logprob": float(v)} for t, v in zip(new, scores)]
        return Generation(text=text, prompt_tokens=int(n_in), completion_tokens=int(len(new)), logprobs=lp,
                          finish_reason=finish)
