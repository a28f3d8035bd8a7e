"""OpenAI-style chat messages, parsed once and checked, for every backend and for the server.

A message is ``{"role": "system"|"user"|"assistant", "content": str | [part, ...]}``; a part is
``{"type": "text", "text": ...}`` or ``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}``
(the ``url`` may also be given as a plain string). Images travel as base64 ``data:`` URLs only:
nothing is ever fetched. Parts keep their order, so an image may come before or after the text.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import mimetypes
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

ROLES = ("system", "user", "assistant")
_MAGIC = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg", b"II*\x00": "image/tiff",
          b"MM\x00*": "image/tiff", b"GIF8": "image/gif", b"BM": "image/bmp"}


class MessageError(ValueError):
    """Messages that cannot be read; the message names the message index, the part and the field."""


@dataclass(frozen=True, eq=False)
class ImageData:
    """An image's bytes and MIME type (``image/png``, ``image/jpeg``, ...)."""

    data: bytes
    mime: str = "image/png"

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def data_url(self) -> str:
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode()}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ImageData) and self.sha256 == other.sha256

    def __hash__(self) -> int:
        return hash(self.sha256)

    @classmethod
    def from_file(cls, path: str | Path) -> "ImageData":
        path = Path(path)
        data = path.read_bytes()
        return cls(data, sniff_mime(data) or mimetypes.guess_type(path.name)[0] or "application/octet-stream")


Part = Union[str, ImageData]


@dataclass
class Message:
    """One turn: a role and its parts in order (text strings and images)."""

    role: str
    parts: list[Part] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The text parts joined by newlines."""
        return "\n".join(p for p in self.parts if isinstance(p, str))

    @property
    def images(self) -> list[ImageData]:
        return [p for p in self.parts if isinstance(p, ImageData)]

    def to_openai(self) -> dict[str, Any]:
        if all(isinstance(p, str) for p in self.parts):
            return {"role": self.role, "content": self.text}
        return {"role": self.role, "content": [
            {"type": "text", "text": p} if isinstance(p, str) else
            {"type": "image_url", "image_url": {"url": p.data_url()}} for p in self.parts]}


def sniff_mime(data: bytes) -> str | None:
    for magic, mime in _MAGIC.items():
        if data.startswith(magic):
            return mime
    return None


def decode_data_url(url: str, where: str = "image_url") -> ImageData:
    """The bytes of a base64 ``data:`` URL; a ``MessageError`` for anything else (nothing is fetched)."""
    if not isinstance(url, str) or not url.startswith("data:") or ";base64," not in url:
        shown = url if isinstance(url, str) and len(url) < 80 else f"{str(url)[:77]}..."
        raise MessageError(f"{where}: the image must be a base64 data URL (data:image/png;base64,...), got "
                           f"{shown!r}; nothing is fetched")
    head, payload = url.split(";base64,", 1)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise MessageError(f"{where}: invalid base64 data in the data URL") from None
    return ImageData(data, head[5:] or sniff_mime(data) or "application/octet-stream")


def parse_messages(raw: Any) -> list[Message]:
    """OpenAI-style dicts (or ``Message`` objects) as checked ``Message`` objects."""
    if not isinstance(raw, list) or not raw:
        raise MessageError("'messages' must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(raw):
        if isinstance(m, Message):
            out.append(m)
            continue
        if not isinstance(m, dict):
            raise MessageError(f"messages[{i}] must be an object with 'role' and 'content'")
        role = m.get("role")
        if role not in ROLES:
            raise MessageError(f"messages[{i}].role is {role!r}; allowed values: {', '.join(ROLES)}")
        content = m.get("content")
        if content is None:
            content = ""
        if isinstance(content, str):
            out.append(Message(role, [content]))
            continue
        if not isinstance(content, list):
            raise MessageError(f"messages[{i}].content must be a string or a list of text/image_url parts")
        parts: list[Part] = []
        for j, part in enumerate(content):
            where = f"messages[{i}].content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                parts.append(str(part.get("text", "")))
            elif kind == "image_url":
                url = part.get("image_url")
                parts.append(decode_data_url(url.get("url", "") if isinstance(url, dict) else url, where))
            else:
                raise MessageError(f"{where}.type is {kind!r}; allowed values: text, image_url")
        out.append(Message(role, parts))
    return out


def to_openai(messages: Sequence[Message]) -> list[dict[str, Any]]:
    return [m.to_openai() for m in messages]


def user(*parts: Part | str | Path) -> Message:
    """A user message from text strings, ``ImageData`` and image file paths, in order."""
    return Message("user", [ImageData.from_file(p) if isinstance(p, Path) else p for p in parts])


def system(text: str) -> Message:
    return Message("system", [text])


def canonical(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """The messages with every image replaced by its sha256 (what a cache key and a record keep)."""
    return [{"role": m.role, "parts": [p if isinstance(p, str) else {"image_sha256": p.sha256} for p in m.parts]}
            for m in messages]


def request_key(fingerprint: str, messages: Sequence[Message], params: dict[str, Any]) -> str:
    """sha256 over (backend fingerprint, messages with images by hash, generation parameters)."""
    blob = json.dumps({"backend": fingerprint, "messages": canonical(messages), "params": params},
                      sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def last_user(messages: Iterable[Message]) -> Message | None:
    users = [m for m in messages if m.role == "user"]
    return users[-1] if users else None
