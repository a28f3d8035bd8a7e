"""``builtin``: medweave's own VQA answerer (a ``medweave vqa train`` model folder) as a backend, so that
it is scored by exactly the code that scores every other model, and served by the same code.

A request is read as a VQA question: the last user message's image (or, in a multi-turn
conversation, the latest image sent before it) and the question found in its text by
``question_from_prompt``, which drops the instruction sentences evaluators add ("Answer the question
using a single word or phrase.", "Please answer yes or no.", ...), "Question:"/"Answer:" labels and
``<image>`` tokens; system prompts are not part of the question. So the answer is the same with or
without them, and with the image before or after the text.

A picture is identified by the sha256 of its bytes, the key under which training cached its
embeddings: the embeddings of every picture (and question) in the model's ``embeddings.duckdb`` are
read once at load, so a picture seen in training is not encoded again, and bytes sent over HTTP give
the embedding that a file of those bytes gives. A new picture is decoded as training decodes files
(grayscale, 8 bit) and encoded once, on ``threads`` torch threads (default 1: a single picture gains
nothing from more, and on a busy machine multi-threaded encoding was measured at 17-23 s per picture
instead of a fraction of a second); its embedding is kept in memory (up to ``memory_pictures``).

Retrieved context in the prompt (a harness task's ``context``: ``generate.context``) is taken out of
the text before the question is read. A model trained with context (``vqa train --context K``) takes
those examples' answers and similarities as its context input; without such a block it retrieves
its own (the training memory); a model trained without context ignores the block.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from .base import Backend, BackendError, BackendOptions, GenParams, Generation
from .messages import ImageData, Message

# sentences that instruct rather than ask (a sentence ending with "?" is never one of them)
_INSTRUCTION = re.compile(
    r"^\s*(?:please\s+|now\s+|kindly\s+)?(?:"
    r"(?:answer|respond|reply)\b"
    r"|(?:give|provide|use|output|return|write|choose|select|pick|state)\b"
    r"|(?:only|just)\b|(?:be|keep (?:it|your answer))\s+(?:brief|concise|short)\b"
    r"|(?:do not|don't|no need to)\b|(?:you are|you're|as an?|act as)\b"
    r"|(?:look at|based on|given|considering|using|with reference to|according to|refer(?:ring)? to)\b[^?]*$"
    r"|(?:think|let's think|let us think)\b|(?:the|your) (?:answer|response|output)\b"
    r"|(?:short|brief|final|one-word|single-word) answer\b"
    r")", re.IGNORECASE)
_LABEL = re.compile(r"^\s*(?:question|q|user|human|input)\s*:\s*", re.IGNORECASE)
_TRAILING_LABEL = re.compile(r"\s*(?:short\s+answer|final\s+answer|answer|a|assistant|output)\s*:\s*$", re.IGNORECASE)
_IMAGE_TOKEN = re.compile(r"<\s*/?\s*image\s*>|<img>|</img>|\[img\]|\[image\]", re.IGNORECASE)
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def question_from_prompt(text: str) -> str:
    """The question inside a prompt: instruction sentences, labels and image tokens removed."""
    text = _IMAGE_TOKEN.sub(" ", str(text))
    keep = []
    for sentence in _SENTENCE.split(text):
        s = _TRAILING_LABEL.sub("", _LABEL.sub("", sentence)).strip()
        if not s or (not s.endswith("?") and _INSTRUCTION.match(s)):
            continue
        keep.append(s)
    asked = [i for i, s in enumerate(keep) if s.endswith("?")]
    if asked:  # context sentences before the (last) question stay; anything after it is dropped
        keep = keep[:asked[-1] + 1]
    return " ".join(" ".join(keep).split())


def conversation_image(messages: list[Message]) -> ImageData | None:
    """The image the last user message asks about: its own first image, else the latest one before it."""
    for m in reversed(messages):
        if m.role == "user" and m.images:
            return m.images[0]
    return None


def decode_picture(image: ImageData) -> np.ndarray:
    """Image bytes as the array training reads from a file of those bytes (grayscale uint8; DICOM as stored)."""
    from PIL import Image, UnidentifiedImageError

    if image.data[128:132] == b"DICM":
        from ..encode.loaders import _dicom_pixels

        return _dicom_pixels(image.data)
    try:
        with Image.open(io.BytesIO(image.data)) as im:
            return np.asarray(im.convert("L"))
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise BackendError(f"the image ({image.mime}, {len(image.data)} bytes) cannot be decoded: {exc}",
                           "input") from None


class BuiltinOptions(BackendOptions):
    model: Path = Field(description="VQA model folder written by `medweave vqa train`.")
    memory_pictures: int = Field(4096, ge=0, description="New pictures whose embeddings are kept in memory.")
    threads: int = Field(1, ge=1, description="torch threads for encoding a new picture (1: see the module notes).")


class BuiltinBackend(Backend):
    """The VQA answerer of ``medweave vqa train`` behind the ``Backend`` interface."""

    kind = "builtin"
    Options = BuiltinOptions
    supports_images = True
    max_concurrency = 1

    def __init__(self, **options: Any):
        super().__init__(**options)
        from ..vqa import Answerer

        self.model_dir = Path(self.options.model)
        try:
            self.model = Answerer.load(self.model_dir)
        except (FileNotFoundError, ValueError, KeyError) as exc:
            raise BackendError(f"builtin backend: {exc}", "input") from None
        self._fingerprint = _folder_fingerprint(self.model_dir, ("config.json", "weights.safetensors"))
        self._lock = threading.Lock()
        self._pictures: OrderedDict[str, np.ndarray] = OrderedDict()
        self._stats: OrderedDict[str, np.ndarray] = OrderedDict()
        self._questions: dict[str, np.ndarray] = {}
        self._preloaded = 0
        self.preload_note = self._preload()

    # -- embeddings ------------------------------------------------------------------------------
    def _preload(self) -> str:
        """Read every cached picture and question embedding of the model folder (read-only)."""
        from ..encode import get_encoder
        from ..vqa.features import QUESTION_ENCODER

        path = self.model_dir / "embeddings.duckdb"
        if not path.is_file():
            return "no embedding cache in the model folder: every picture is encoded on first use"
        import duckdb

        from ..store.catalog import close_duckdb, connect_duckdb

        # Through the registry (store.catalog): while it reads, no other connection of this process to
        # the file hands DuckDB's blocks back (release_buffers), which would starve this one's queries.
        try:
            con = connect_duckdb(path, read_only=True)
        except duckdb.Error as exc:
            return f"embedding cache {path} not readable ({exc}); pictures are encoded on first use"
        try:
            encs = [get_encoder(e) if isinstance(e, str) else e for e in (*self.model.image_encoders(), QUESTION_ENCODER)]
            found: list[dict[str, np.ndarray]] = []
            for e in encs:
                rows = con.execute("SELECT content_hash, vec FROM embeddings WHERE encoder = ? AND version = ?",
                                   [e.name, e.version]).fetchall()
                found.append({h: np.frombuffer(v, dtype=np.float32) for h, v in rows})
        finally:
            close_duckdb(con)
        *views, questions = found
        for h in set(views[0]).intersection(*views[1:]):
            self._pictures[h] = np.concatenate([v[h] for v in views])
        self._questions = questions
        self._preloaded = len(self._pictures)
        return f"{len(self._pictures)} picture and {len(questions)} question embeddings read from {path}"

    def picture_embedding(self, image: ImageData | np.ndarray) -> np.ndarray:
        """The (2560,) embedding of a picture given as bytes (keyed by their sha256) or as an array."""
        from ..vqa.features import _encode_cached, array_hash

        key = image.sha256 if isinstance(image, ImageData) else "array:" + array_hash(np.asarray(image))
        hit = self._pictures.get(key)
        if hit is not None:
            self._pictures.move_to_end(key)
            return hit
        from ..encode.text import torch_threads

        arr = decode_picture(image) if isinstance(image, ImageData) else np.asarray(image)
        with torch_threads(self.options.threads):
            vec = _encode_cached([key], lambda _i: arr, self.model.image_encoders(), None)[0]
        self._pictures[key] = vec
        while len(self._pictures) > self._preloaded + self.options.memory_pictures:
            self._pictures.popitem(last=False)
        return vec

    def picture_stats(self, image: ImageData | np.ndarray) -> np.ndarray:
        """(1, 2) pixel statistics of a picture (``vqa.gate.pixel_stats``), decoded as training decodes
        files; kept in memory beside its embedding. Asked only for a picture that is not a training one."""
        from ..vqa.features import array_hash
        from ..vqa.gate import pixel_stats

        key = image.sha256 if isinstance(image, ImageData) else "array:" + array_hash(np.asarray(image))
        hit = self._stats.get(key)
        if hit is None:
            hit = pixel_stats(decode_picture(image) if isinstance(image, ImageData) else np.asarray(image))[None]
            self._stats[key] = hit
            while len(self._stats) > self.options.memory_pictures:
                self._stats.popitem(last=False)
        return hit

    def question_embedding(self, question: str) -> np.ndarray:
        from ..vqa.features import embed_questions, text_hash

        key = text_hash(question)
        hit = self._questions.get(key)
        if hit is None:
            hit = embed_questions([question])[0]
            if len(self._questions) < 200_000:
                self._questions[key] = hit
        return hit

    # -- answering -------------------------------------------------------------------------------
    def answer(self, image: ImageData | np.ndarray | None, question: str, context: list | None = None) -> dict[str, Any]:
        """The answer to one question about one picture: answer, probability, type assumed. ``context``:
        retrieved entries from the prompt (``generate.context.ContextEntry``), the context input of a
        model trained with context (else it retrieves its own); other models ignore them."""
        if image is None:
            raise BackendError("the builtin VQA answerer answers questions about a picture: send an image part",
                               "input")
        if not question.strip():
            raise BackendError("no question found in the text of the last user message", "input")
        with self._lock:
            img = self.picture_embedding(image)
            q = self.question_embedding(question)
            stats = self.picture_stats(image) if self.model.needs_pixels(img[None]) else None
            ctx, used = None, None
            if self.model.cfg.context:
                if context:
                    ctx = self.model.context_from_answers([[e.answer for e in context]], [[e.score for e in context]])
                    used = {"context_source": "prompt", "context_ids": [e.id for e in context]}
                else:
                    ctx, rows, _ = self.model.context_features(img[None], q[None])
                    used = {"context_source": "model memory",
                            "context_ids": [str(self.model.cases[i].get("qid", i)) for i in rows[0] if i >= 0]}
            pred = self.model.predict(img[None], q[None], ctx, questions=[question], picture_stats=stats)[0]
        from ..vqa.pipeline import gate_fields

        # an abstention's answer is "" (scored wrong); its reason is a field of its own, never the
        # answer text, where an extractor would read the "no" of "no readable content" as an answer
        return {"answer": pred.answer, "probability": float(pred.prob),
                "type": "closed" if pred.closed else "open", "p_closed": float(pred.p_closed),
                "memory_weight": float(pred.from_memory), "question": question, **(used or {}),
                **gate_fields(self.model, pred), "_img": img, "_q": q}

    def similar_cases(self, img: np.ndarray, q: np.ndarray, k: int = 3) -> list[dict]:
        return self.model.similar_cases(img[None], q[None], k)

    def _generate(self, messages: list[Message], params: GenParams) -> Generation:
        users = [m for m in messages if m.role == "user"]
        if not users:
            raise BackendError("no message with role 'user' to answer", "input")
        from .context import split_context

        entries, text = split_context(users[-1].text)
        question = question_from_prompt(text)
        out = self.answer(conversation_image(messages), question, entries)
        text = out["answer"]
        if out["abstained"]:  # a reply's text is never empty: the marker and the reason (vqa.gate.chat_text)
            from ..vqa.gate import chat_text

            text = chat_text(out["reason"])
        return Generation(text=text, prompt_tokens=len(question.split()),
                          completion_tokens=len(text.split()),
                          logprobs=[{"token": text, "logprob": math.log(max(out["probability"], 1e-12))}],
                          finish_reason="stop", extra={k: v for k, v in out.items() if not k.startswith("_")})

    @property
    def name(self) -> str:
        return f"medweave-vqa-{self.model_dir.name}"

    def fingerprint(self) -> str:
        return f"builtin:{self._fingerprint}"


def _folder_fingerprint(folder: Path, names: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for n in names:
        p = folder / n
        h.update(n.encode())
        h.update(hashlib.sha256(p.read_bytes()).digest() if p.is_file() else b"-")
    return h.hexdigest()[:32]
