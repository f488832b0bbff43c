"""ATTEMPT: each input's prompt is an attention-weighted mixture of frozen source prompts and a trained target prompt.

Equation:   x̂ = maxpool_t E(x)_t,   h = LayerNorm(W_up SiLU(W_down x̂)),   P̂_j = maxpool_i (P_j)_i,
            a_j = softmax_j(P̂_j · h / T)  over j = 1..t+1  (the t source prompts and P_{t+1} = P_target),
            P(x) = P_target + Σ_{j=1..t+1} a_j P_j,     X' = [P(x); E(x)]
            P_j ∈ R^{n_virtual_tokens × d_model}; W_down ∈ R^{attn_hidden × d_model},
            W_up ∈ R^{d_model × attn_hidden}
Trainable:  n_virtual_tokens * d_model + 2 * d_model * attn_hidden + 2 * d_model   (catalog: trainable_params.total:
            P_target, W_down, W_up and the layer norm's weight and bias; the source prompts are frozen)
Paper:      "ATTEMPT: Parameter-Efficient Multi-task Tuning via Attentional Mixtures of Soft Prompts",
            Akari Asai et al., 2022 (EMNLP 2022), arXiv 2205.11961.

The procedure: source prompts are trained beforehand by prompt tuning on the source tasks (`train_source_prompts`)
and handed to the model as a safetensors file (`config.source_prompts`, tensor "prompts" of shape
(n_source_prompts, n_virtual_tokens, d_model)) or with `set_source_prompts`; they stay frozen (buffers).
Without trained source prompts the model builds placeholder ones from vocabulary embeddings drawn with a fixed
seed, so two models built with the same config are the same function of their trainable parameters.
Choices: T = d_model · e (the authors' code fixes T = 2000 for T5-base, d_model = 768, and 768 · e ≈ 2088; it
keeps the attention from saturating early); the target prompt starts from sampled vocabulary embeddings, the
projections from nn.Linear's init without biases, the layer norm from (1, 0); the max-pool over the input skips
padding positions. Left out: training one attention module jointly for several target tasks (the paper's
multi-task variant; the module here is per model). Not mergeable: the prompt is input, not weight.

Checked against: the authors' code github.com/AkariAsai/ATTEMPT @b5121e53
(attempt/third_party/models/t5/modeling_t5.py, T5Stack with attn_method "sub": max over the input
embeddings, attn_W_down (d -> 100, no bias), SiLU, attn_W_up, nn.LayerNorm, scores = max-pooled prompts
(sources and target) · x / temperature, softmax over prompts, soft prompt = Σ a_j P_j + the target prompt,
prepended to the input embeddings; temperature 2000, or d · exp(·) when learned). The paper's method
section was not re-read in this pass; the equation above is the code's. Deviation: the authors' max-pool
includes padding positions. peft has no ATTEMPT. Numeric pin: test_attempt.py re-computes P(x) by hand
(max-pools, SiLU bottleneck, layer norm, T = d · e, softmax, target + weighted sum).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from reference_impls._core import freeze_base
from reference_impls._prompts import PromptedModel, max_pool, vocab_init


@dataclass
class AttemptConfig:
    n_virtual_tokens: int = 100          # length of every source and target prompt
    n_source_prompts: int = 6            # frozen source prompts mixed (placeholders unless source_prompts is set)
    attn_hidden: int = 100               # bottleneck of the attention module's down/up projections
    source_prompts: str | None = None    # safetensors file with "prompts": (n_source_prompts, P, d_model)
    placeholder_seed: int = 0            # seed of the placeholder source prompts


class AttemptModel(PromptedModel):
    def __init__(self, model: nn.Module, config: AttemptConfig) -> None:
        super().__init__(model)
        d = model.get_input_embeddings().weight.shape[1]
        self.target_prompt = nn.Parameter(vocab_init(model, config.n_virtual_tokens))  # P_target: (P, d_model)
        self.down = nn.Linear(d, config.attn_hidden, bias=False)  # W_down
        self.up = nn.Linear(config.attn_hidden, d, bias=False)    # W_up
        self.norm = nn.LayerNorm(d)
        self.temperature = d * math.e
        if config.source_prompts is not None:
            from safetensors.torch import load_file

            sources = load_file(config.source_prompts)["prompts"]
        else:
            g = torch.Generator().manual_seed(config.placeholder_seed)
            sources = torch.stack([vocab_init(model, config.n_virtual_tokens, g)
                                   for _ in range(config.n_source_prompts)])
        self.register_buffer("source_prompts", sources.clone())  # (t, P, d_model), frozen

    def attention(self, x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """a: (B, t+1), the weights of the source prompts and (last) the target prompt for every input."""
        h = self.norm(self.up(nn.functional.silu(self.down(max_pool(x, attention_mask)))))  # (B, d_model)
        prompts = torch.cat([self.source_prompts, self.target_prompt[None]], dim=0)  # (t+1, P, d_model)
        keys = prompts.max(dim=1).values  # P̂_j: (t+1, d_model)
        return ((h @ keys.T) / self.temperature).softmax(dim=-1)  # (B, t+1)

    def prompt(self, input_ids: torch.Tensor, x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        a = self.attention(x, attention_mask)  # (B, t+1)
        prompts = torch.cat([self.source_prompts, self.target_prompt[None]], dim=0)  # (t+1, P, d_model)
        return self.target_prompt + torch.einsum("bj,jpd->bpd", a, prompts)  # (B, P, d_model)


@torch.no_grad()
def set_source_prompts(model: AttemptModel, prompts: torch.Tensor) -> AttemptModel:
    """Replace the frozen source prompts (t may change: sources can be added or removed)."""
    if prompts.shape[1:] != model.target_prompt.shape:
        raise ValueError(f"source prompts {tuple(prompts.shape)} do not fit (t, {tuple(model.target_prompt.shape)})")
    model.source_prompts = prompts.detach().clone().to(model.target_prompt)
    return model


def train_source_prompts(make_model, batches: list[dict[str, torch.Tensor]], n_virtual_tokens: int, steps: int,
                         lr: float = 0.3) -> torch.Tensor:
    """Prompt tuning on every source task; `make_model()` returns a fresh base model. (t, P, d_model)"""
    from reference_impls import prompt_tuning
    from reference_impls._core import train

    prompts = []
    for batch in batches:
        pt = prompt_tuning.apply(make_model(), prompt_tuning.PromptTuningConfig(n_virtual_tokens=n_virtual_tokens))
        train(pt, batch, steps, lr)
        prompts.append(pt.prompt.detach().clone())
    return torch.stack(prompts)


def save_source_prompts(prompts: torch.Tensor, path: str | Path) -> None:
    from safetensors.torch import save_file

    save_file({"prompts": prompts.detach().contiguous().cpu()}, str(path))


def apply(model: nn.Module, config: AttemptConfig) -> nn.Module:
    freeze_base(model)
    return AttemptModel(model, config)
