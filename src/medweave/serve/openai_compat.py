"""An OpenAI-compatible surface: ``GET /v1/models`` and ``POST /v1/chat/completions``.

Messages follow the OpenAI chat format: ``content`` is a string or a list of parts
``{"type": "text", "text": ...}`` and ``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}``.
The last user message is answered by the VQA model: its text parts joined are the question, its
first image the image. Only ``data:`` URLs are read (the server fetches nothing). ``stream: true``
sends the answer as one chunk of server-sent events, then ``[DONE]``.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from .state import ServeError, ServerState, decode_image


def parse_messages(messages: Any) -> tuple[str, bytes | None]:
    """(question, image bytes or None) from the last user message."""
    if not isinstance(messages, list) or not messages:
        raise ServeError(400, "'messages' must be a non-empty list of {role, content} objects")
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise ServeError(400, "no message with role 'user' to answer")
    content = users[-1].get("content")
    if isinstance(content, str):
        return content, None
    if not isinstance(content, list):
        raise ServeError(400, "message content must be a string or a list of text/image_url parts")
    texts, image = [], None
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url" and image is None:
            url = part.get("image_url", {})
            image = data_url_bytes(url.get("url", "") if isinstance(url, dict) else str(url))
        elif kind != "image_url":
            raise ServeError(400, f"unsupported content part type {kind!r}; allowed: text, image_url")
    return " ".join(t for t in texts if t).strip(), image


def data_url_bytes(url: str) -> bytes:
    """The bytes of a base64 ``data:`` URL; other URLs are refused (nothing is fetched)."""
    if not url.startswith("data:") or ";base64," not in url:
        raise ServeError(400, "image_url must be a base64 data URL (data:image/png;base64,...); "
                              "the server does not fetch remote URLs")
    try:
        return base64.b64decode(url.split(";base64,", 1)[1], validate=True)
    except (binascii.Error, ValueError):
        raise ServeError(400, "image_url: invalid base64 data") from None


def completion(model: str, answer: str, question: str) -> dict[str, Any]:
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": len(question.split()), "completion_tokens": len(answer.split()),
                      "total_tokens": len(question.split()) + len(answer.split())}}


def stream_chunks(result: dict[str, Any]):
    """Server-sent events: one chunk with the whole answer, a final chunk, [DONE]."""
    base = {"id": result["id"], "object": "chat.completion.chunk", "created": result["created"],
            "model": result["model"]}
    first = {**base, "choices": [{"index": 0, "delta": {"role": "assistant",
                                                         "content": result["choices"][0]["message"]["content"]},
                                  "finish_reason": None}]}
    last = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    for chunk in (first, last):
        yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"


def build_router() -> APIRouter:
    r = APIRouter(prefix="/v1")

    @r.get("/models", summary="OpenAI-compatible model list (the VQA model, when loaded)")
    def models(request: Request) -> dict[str, Any]:
        st: ServerState = request.app.state.medweave
        data = [] if st.answerer is None else [{"id": st.answerer.name, "object": "model", "created": 0,
                                                 "owned_by": "medweave"}]
        return {"object": "list", "data": data}

    @r.post("/chat/completions", summary="OpenAI-compatible chat completion answered by the VQA model")
    async def chat(request: Request):
        from .api import answer_question

        st: ServerState = request.app.state.medweave
        try:
            body = await request.json()
        except ValueError:
            raise ServeError(400, "the request body is not JSON") from None
        if not isinstance(body, dict):
            raise ServeError(400, "the request body must be a JSON object")
        question, image = parse_messages(body.get("messages"))
        if not question:
            raise ServeError(400, "the user message has no text: put the question in a text part")
        out = answer_question(st, decode_image(image) if image is not None else None, question)
        result = completion(out["model"], out["answer"], question)
        if body.get("stream"):
            return StreamingResponse(stream_chunks(result), media_type="text/event-stream")
        return result

    return r
