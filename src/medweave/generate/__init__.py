"""Text generation backends behind one interface (``Backend``): the built-in VQA answerer, any
OpenAI-compatible server, a local GGUF through llama.cpp, a local Hugging Face model folder."""

from .base import (BACKENDS, Backend, BackendError, BackendOptions, GenParams, Generation, OptionsError,
                   load_backend, parse_option_pairs)
from .messages import ImageData, Message, MessageError, parse_messages, request_key, system, to_openai, user

__all__ = ["BACKENDS", "Backend", "BackendError", "BackendOptions", "GenParams", "Generation", "ImageData",
           "Message", "MessageError", "OptionsError", "load_backend", "parse_messages", "parse_option_pairs",
           "request_key", "system", "to_openai", "user"]
