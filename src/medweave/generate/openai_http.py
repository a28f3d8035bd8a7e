"""``openai``: any OpenAI-compatible chat server (vLLM, SGLang, Ollama's ``/v1``, the llama.cpp server,
LM Studio, OpenAI itself, medweave's own ``medweave serve``).

Options: ``base_url`` (ending in ``/v1``), ``model`` (default: the first model the server lists),
``api_key_env`` (the environment variable holding the key; the key itself never enters a run record),
``timeout`` (seconds per request), ``retries`` with exponential ``backoff`` on connection errors,
timeouts, 429 and 5xx (a ``Retry-After`` header is honoured), ``concurrency`` (requests in flight).
An unreachable server is an error naming the URL.
"""

from __future__ import annotations

import os
import random
import threading
import time
from typing import Any

from pydantic import Field

from .base import Backend, BackendError, BackendOptions, GenParams, Generation
from .messages import Message, to_openai


class OpenAIOptions(BackendOptions):
    base_url: str = Field(description="Server URL up to /v1, e.g. http://127.0.0.1:8000/v1.")
    model: str | None = Field(None, description="Model name (default: the first one the server lists).")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key.")
    timeout: float = Field(120.0, gt=0, description="Seconds per request.")
    retries: int = Field(3, ge=0, description="Retries on connection errors, timeouts, 429 and 5xx.")
    backoff: float = Field(0.5, ge=0, description="First retry delay in seconds (doubled each retry).")
    concurrency: int = Field(4, ge=1, description="Requests in flight at once.")
    images: bool = Field(True, description="Whether the model takes image parts (false: text-only model).")


class OpenAIBackend(Backend):
    kind = "openai"
    Options = OpenAIOptions

    def __init__(self, **options: Any):
        super().__init__(**options)
        import httpx

        o = self.options
        self.base_url = o.base_url.rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            raise BackendError(f"openai backend: base_url {o.base_url!r} must start with http:// or https://",
                               "input")
        key = os.environ.get(o.api_key_env, "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        limits = httpx.Limits(max_connections=o.concurrency, max_keepalive_connections=o.concurrency)
        self._client = httpx.Client(timeout=o.timeout, headers=headers, limits=limits)
        self._model = o.model
        self._lock = threading.Lock()
        self.supports_images = o.images
        self.max_concurrency = o.concurrency

    @property
    def model_name(self) -> str:
        with self._lock:
            if self._model is None:
                data = self._request("GET", "/models")
                models = [m.get("id") for m in data.get("data", []) if isinstance(m, dict)] \
                    if isinstance(data, dict) else []
                if not models:
                    raise BackendError(f"{self.base_url}/models lists no model: pass the option model=NAME",
                                       "malformed")
                self._model = str(models[0])
            return self._model

    @property
    def name(self) -> str:
        return self._model or self.base_url

    def fingerprint(self) -> str:
        return f"openai:{self.base_url}:{self.model_name}"

    def _request(self, method: str, path: str, body: dict | None = None) -> Any:
        """One request with retries; returns the decoded JSON or raises ``BackendError`` naming the URL."""
        import httpx

        url = self.base_url + path
        o = self.options
        last: BackendError | None = None
        for attempt in range(o.retries + 1):
            if attempt:
                time.sleep(self._delay(attempt, last))
            try:
                r = self._client.request(method, url, json=body)
            except httpx.TimeoutException:
                last = BackendError(f"{url}: no answer within {o.timeout:g} s (timeout)", "timeout", True)
                continue
            except httpx.HTTPError as exc:
                last = BackendError(f"{url}: server unreachable ({type(exc).__name__}: {exc})", "unreachable", True)
                continue
            if r.status_code == 429 or r.status_code >= 500:
                last = BackendError(f"{url}: HTTP {r.status_code}: {_error_text(r)}", "http", True, r.status_code)
                last.retry_after = _retry_after(r)  # type: ignore[attr-defined]
                continue
            if r.status_code >= 400:
                raise BackendError(f"{url}: HTTP {r.status_code}: {_error_text(r)}", "http", False, r.status_code)
            try:
                return r.json()
            except ValueError:
                raise BackendError(f"{url}: the reply is not JSON: {r.text[:200]!r}", "malformed") from None
        assert last is not None
        if o.retries:
            last.args = (f"{last.args[0]} (after {o.retries + 1} attempts)",)
        raise last

    def _delay(self, attempt: int, last: BackendError | None) -> float:
        after = getattr(last, "retry_after", None)
        if after is not None:
            return min(after, 60.0)
        return self.options.backoff * (2 ** (attempt - 1)) * (1 + 0.25 * random.random())

    def _generate(self, messages: list[Message], params: GenParams) -> Generation:
        body: dict[str, Any] = {"model": self.model_name, "messages": to_openai(messages),
                                "temperature": params.temperature, "max_tokens": params.max_tokens}
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)
        if params.top_p is not None:
            body["top_p"] = params.top_p
        if params.logprobs:
            body["logprobs"] = True
        t0 = time.perf_counter()
        data = self._request("POST", "/chat/completions", body)
        latency = time.perf_counter() - t0
        return parse_completion(data, self.base_url + "/chat/completions", latency)

    def close(self) -> None:
        self._client.close()


def parse_completion(data: Any, url: str, latency: float = 0.0) -> Generation:
    """A ``Generation`` from an OpenAI chat-completion body; ``BackendError`` when it is not one."""
    try:
        choice = data["choices"][0]
        message = choice["message"]
    except (KeyError, IndexError, TypeError):
        raise BackendError(f"{url}: malformed completion (no choices[0].message): {str(data)[:200]}",
                           "malformed") from None
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):  # some servers return content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if content is not None and not isinstance(content, str):
        raise BackendError(f"{url}: malformed completion (content is {type(content).__name__})", "malformed")
    if not content or not content.strip():
        raise BackendError(f"{url}: empty completion (finish_reason {choice.get('finish_reason')!r})", "empty")
    usage = data.get("usage") or {}
    lp = None
    raw_lp = (choice.get("logprobs") or {}).get("content") if isinstance(choice.get("logprobs"), dict) else None
    if isinstance(raw_lp, list):
        lp = [{"token": t.get("token"), "logprob": t.get("logprob")} for t in raw_lp if isinstance(t, dict)]
    return Generation(text=content, latency_s=latency, prompt_tokens=usage.get("prompt_tokens"),
                      completion_tokens=usage.get("completion_tokens"), logprobs=lp,
                      finish_reason=choice.get("finish_reason"), model=str(data.get("model") or ""))


def _error_text(r) -> str:
    try:
        body = r.json()
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            return str(body["error"].get("message", body["error"]))[:300]
        if isinstance(body, dict) and "detail" in body:
            return str(body["detail"])[:300]
    except ValueError:
        pass
    return (r.text or r.reason_phrase or "")[:300]


def _retry_after(r) -> float | None:
    v = r.headers.get("retry-after")
    try:
        return float(v) if v is not None else None
    except ValueError:
        return None
