"""A tiny Llama saved as a local Hugging Face folder (config, safetensors, tokenizer): what a user points
`--model-path` at, built from a config and a word-level tokenizer made here (no hub, no download)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

TINY_LLAMA = dict(model_type="llama", hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, vocab_size=64, max_position_embeddings=128)
# Multi-head (not grouped) attention: with grouped queries peft sizes prefix tuning's MLP input by hidden_size
# where the catalog formula uses n_kv_heads * d_head, a difference catalog/prefix-tuning.yaml states and
# tests/calculators pins; here the exported config must adapt exactly what peftkb counts.
WORDS = "parameter efficient fine tuning trains few weights . the a of and".split()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(**TINY_LLAMA)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    vocab = {w: i for i, w in enumerate(["[UNK]", "[PAD]", "<s>", "</s>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                                bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama_config(tiny_llama_dir: Path) -> Path:
    """The folder's config.json, which `peftkb export -m` reads for module names and sizes."""
    path = tiny_llama_dir / "config.json"
    assert json.loads(path.read_text())["model_type"] == "llama"
    return path
