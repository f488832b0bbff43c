"""Tiny random Hugging Face model folders with a real (byte-level) tokenizer, built once per session.

No downloads: the configs are written here, the tokenizer is built with the `tokenizers` library from the
256 byte symbols plus pad and EOS, and both are saved as a user's model folder would be.
"""
from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data"


def byte_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}  # 256 byte symbols
    vocab.update({"<pad>": 256, "<eos>": 257})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def save_tiny(folder: Path, kind: str) -> Path:
    import torch
    import transformers as tf

    common = dict(vocab_size=260, max_position_embeddings=256, initializer_range=0.2, pad_token_id=256,
                  eos_token_id=257)
    if kind == "llama":
        config = tf.LlamaConfig(**common, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2)
        cls = tf.LlamaForCausalLM
    elif kind == "bert":
        config = tf.BertConfig(**common, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64)
        cls = tf.BertForMaskedLM
    else:
        raise ValueError(kind)
    torch.manual_seed(0)
    cls(config).save_pretrained(folder, safe_serialization=True)
    byte_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("models") / "tiny-llama", "llama")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("models") / "tiny-bert", "bert")
