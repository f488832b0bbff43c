"""DePT (Decomposed Prompt Tuning): a shorter soft prompt plus a low-rank update of the input embeddings.

Equation:   X' = [P; E(x) + α/√r · (A B)[:T]],   P ∈ R^{m × d_model},  A ∈ R^{s × r},  B ∈ R^{r × d_model}
            (m = n_virtual_tokens, s = max_seq_len: row t of A B is added to the embedding at position t;
            α = lora_alpha, scaled by 1/√r as in the authors' code)
Trainable:  n_virtual_tokens * d_model + max_seq_len * r + r * d_model      (catalog: trainable_params.total)
Paper:      "DePT: Decomposed Prompt Tuning for Parameter-Efficient Fine-tuning", Zhengxiang Shi and
            Aldo Lipani, 2023 (ICLR 2024), arXiv 2309.05173.

The paper trains the two parts with different learning rates (the prompt's larger); `param_groups` builds
the optimizer groups. Initialisation: P copies sampled vocabulary embeddings (prompt tuning's label-free
init; the paper initialises from the vocabulary too), A is Kaiming-uniform and B zero as in LoRA and in the
authors' code, so the embedding update starts at zero and the model starts out equal to prompt tuning with the
same prompt. The authors' code pads every input to max_seq_len and adds all s rows; here the first T rows are
added to an input of length T, which is the same on the real positions. Inputs longer than max_seq_len are
rejected: A has one row per position. On T5 the update goes to the
encoder's input only, where the prompt goes. Not mergeable: P is input, and the update depends on the
position, not on the token, so it cannot be folded into the embedding table.

Checked against: the authors' code github.com/ZhengxiangShi/DePT @f0266a77 (peft/tuners/
prompt_tuning_lora.py: lora_embedding_A (max_length × r) Kaiming-uniform(a = √5), lora_embedding_B
(r × d) zero, scaling = lora_alpha / sqrt(r), lora_alpha 8, max_length 256; peft/peft_model.py adds
scaling · A B to the input embeddings before the prompt is prepended; README: MAX_LENGTH 256, R 45,
PREFIX_LENGTH 40 or 60, separate learning_rate and lora_embedding_lr). The paper's text was not re-read in
this pass beyond its abstract. peft 0.21.2 has no DePT. Numeric pin: test_dept.py re-computes
[P; E(x) + α/√r (A B)[:T]] and the model's logits on it by hand.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._core import freeze_base, kaiming_uniform_
from reference_impls._prompts import PromptedModel, vocab_init


@dataclass
class DeptConfig:
    n_virtual_tokens: int = 40   # length m of the shortened soft prompt
    r: int = 45                  # rank of the position-wise update A B of the input embeddings
    max_seq_len: int = 256       # maximum input length s (rows of A)
    lora_alpha: float = 8.0      # α: the update is scaled by α / sqrt(r) (the authors' code and default)


class DeptModel(PromptedModel):
    def __init__(self, model: nn.Module, config: DeptConfig) -> None:
        super().__init__(model)
        d = model.get_input_embeddings().weight.shape[1]
        self.prompt_embeddings = nn.Parameter(vocab_init(model, config.n_virtual_tokens))  # P: (m, d_model)
        # LoRA's init: A random, B zero, so A B = 0 and the embeddings start unchanged
        self.lora_A = nn.Parameter(kaiming_uniform_(torch.empty(config.max_seq_len, config.r)))  # (s, r)
        self.lora_B = nn.Parameter(torch.zeros(config.r, d))  # (r, d_model)
        self.scaling = config.lora_alpha / config.r ** 0.5

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        T = input_ids.shape[1]
        if T > self.lora_A.shape[0]:
            raise ValueError(f"input length {T} exceeds max_seq_len {self.lora_A.shape[0]}")
        x = self.model.get_input_embeddings()(input_ids)  # (B, T, d_model)
        return x + (self.scaling * self.lora_A[:T] @ self.lora_B).to(x.dtype)  # + (T, d_model), over the batch

    def prompt(self, input_ids: torch.Tensor, x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        return self.prompt_embeddings.expand(x.shape[0], -1, -1)  # (B, m, d_model)


def param_groups(model: DeptModel, lr_prompt: float, lr_low_rank: float) -> list[dict]:
    """Adam parameter groups with the paper's two learning rates."""
    return [{"params": [model.prompt_embeddings], "lr": lr_prompt},
            {"params": [model.lora_A, model.lora_B], "lr": lr_low_rank}]


def apply(model: nn.Module, config: DeptConfig) -> nn.Module:
    freeze_base(model)
    return DeptModel(model, config)
