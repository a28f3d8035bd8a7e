"""An OpenAI-compatible surface: ``GET /v1/models`` and ``POST /v1/chat/completions``.

Messages follow the OpenAI chat format (``medweave.generate.messages``): ``content`` is a string or a
list of parts ``{"type": "text", "text": ...}`` and ``{"type": "image_url", "image_url": {"url":
"data:image/png;base64,..."}}``, in any order. The VQA model answers through the ``builtin`` backend,
the very code the evaluation harness scores: the question is read from the last user message with the
instruction sentences evaluators add removed, system prompts are not part of it, and in a multi-turn
conversation the latest image sent is the one asked about. Only ``data:`` URLs are read (the server
fetches nothing). ``stream: true`` sends the answer as server-sent events, then ``[DONE]``.
The work runs in a worker thread, so one request never blocks the event loop.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, List, Literal, Optional

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from .state import ERROR_RESPONSES, ServeError, ServerState


def completion(model: str, gen, want_logprobs: bool = False) -> dict[str, Any]:
    """The chat.completion body for a ``Generation``."""
    logprobs = {"content": [{"token": t["token"], "logprob": t["logprob"], "bytes": None, "top_logprobs": []}
                            for t in gen.logprobs or []]} if want_logprobs else None
    pt, ct = gen.prompt_tokens or 0, gen.completion_tokens or 0
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "message": {"role": "assistant", "content": gen.text},
                                         "finish_reason": gen.finish_reason or "stop", "logprobs": logprobs}],
            "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}}


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


# The request body as the OpenAPI document describes it (parsed by ``parse_messages``, whose errors name
# the field: a 400, as OpenAI answers, rather than FastAPI's 422). Schema-valid bodies may still be
# answered 400/415: a conversation without a picture, a data URL that is not an image.
_TEXT_PART = {"type": "object", "required": ["type", "text"],
              "properties": {"type": {"enum": ["text"]}, "text": {"type": "string"}}}
_IMAGE_PART = {"type": "object", "required": ["type", "image_url"],
               "properties": {"type": {"enum": ["image_url"]},
                              "image_url": {"type": "object", "required": ["url"], "properties": {
                                  "url": {"type": "string", "description": "a data: URL (nothing is fetched)"}}}}}
CHAT_REQUEST = {"type": "object", "required": ["messages"], "properties": {
    "model": {"type": "string"},
    "messages": {"type": "array", "minItems": 1, "items": {
        "type": "object", "required": ["role", "content"], "properties": {
            "role": {"enum": ["system", "user", "assistant"]},
            "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"anyOf": [_TEXT_PART, _IMAGE_PART]}}]}}}},
    "stream": {"type": "boolean"}, "logprobs": {"type": "boolean"},
    "max_tokens": {"type": "integer"}, "temperature": {"type": "number"}}}


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: List[ModelCard]


class ChatMessageOut(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    finish_reason: str
    logprobs: Optional[dict] = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: List[ChatChoice]
    usage: Usage


def build_router() -> APIRouter:
    r = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)

    @r.get("/models", summary="OpenAI-compatible model list (the VQA model, when loaded)")
    def models(request: Request) -> ModelList:
        st: ServerState = request.app.state.medweave
        data = [] if st.answerer is None else [{"id": st.answerer.name, "object": "model", "created": 0,
                                                 "owned_by": "medweave"}]
        return ModelList(object="list", data=data)

    @r.post("/chat/completions", summary="OpenAI-compatible chat completion answered by the VQA model",
            response_model=ChatCompletion,
            openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": CHAT_REQUEST}}}},
            responses={200: {"description": "The completion (with stream: server-sent chat.completion.chunk events)",
                             "content": {"text/event-stream": {"schema": {"type": "string"}}}}})
    async def chat(request: Request):
        from ..generate import BackendError, MessageError, parse_messages

        st: ServerState = request.app.state.medweave
        try:
            body = await request.json()
        except ValueError:
            raise ServeError(400, "the request body is not JSON") from None
        if not isinstance(body, dict):
            raise ServeError(400, "the request body must be a JSON object")
        if st.answerer is None:
            raise ServeError(503, st.vqa_error, "vqa_unavailable")
        try:
            messages = parse_messages(body.get("messages"))
            gen = await run_in_threadpool(st.answerer.generate, messages)
        except MessageError as exc:
            raise ServeError(400, str(exc)) from None
        except BackendError as exc:
            raise ServeError(415 if "decoded" in str(exc) else 400, str(exc)) from None
        result = completion(st.answerer.name, gen, bool(body.get("logprobs")))
        if body.get("stream"):
            return StreamingResponse(stream_chunks(result), media_type="text/event-stream")
        return result

    return r
