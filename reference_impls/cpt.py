"""CPT: Context-aware Prompt Tuning (in-context examples as a soft prompt, refined inside small L2 balls).

Equation:   X' = [E(c) + Δ; E(x)],   c = the context's token ids (labelled examples), Δ ∈ R^{n × d_model} trained,
            after every optimizer step  Δ_i ← Δ_i · min(1, ε_i / ‖Δ_i‖₂)   (projected gradient descent),
            ε_i = epsilon · √(d_model / 2048) for input tokens, format_epsilon · √(d_model / 2048) for template
            tokens, and label tokens are never changed;
            loss = mean over every label token t (context labels and the query's) of  w_t · CE(logits_{t-1}, c_t),
            w_t = 1, or with weighted_loss = "decay"  loss_decay_factor^k  for a label of the k-th most recent example.
Trainable:  n_virtual_tokens * d_model                               (catalog: trainable_params.total)
Paper:      "Context-aware Prompt Tuning: Advancing In-Context Learning with Adversarial Methods", Tsachi Blau
            et al., 2024, arXiv 2410.17222.

The context is a few labelled training examples written out as text, as in in-context learning; each token
has a type, example e (0, 1, ...) using 4e+1 for its input template, 4e+2 for its input, 4e+3 for its
output template and 4e+4 for its label (0: ignored). The embeddings of the context tokens start as the
frozen token embeddings and learn a delta each; the projection keeps each delta in a small ball, so the
context stays close to the text (the adversarial-attack view of the paper). Label tokens keep their
embeddings: their delta gets no gradient (all n rows are parameters, as in peft, so the count is n · d_model).
The loss covers the labels inside the context as well as the labels of the query (the real input), whose
tokens are all labels by default (`input_type_mask` gives other types per position). The delta starts at 0,
so the model starts as the base model reading the raw context: in-context learning.

Causal language models only (the loss is next-token prediction over the context and the input): LLaMA and
GPT-2 here, as peft (task_type CAUSAL_LM). The projection runs after each optimizer step
(`training_hooks`), as the paper's projected gradient descent; peft projects at the start of each forward
pass instead, which gives the same trajectory. Not mergeable: the context is input, not weight.

Checked against: the paper (token types, the projection onto the ε-ball after each step, the loss over
the context's labels with exponential decay); peft 0.21.2 `peft/tuners/cpt/model.py` (CPTEmbedding:
ε · √(d/2048), the gradient mask, calculate_loss) and `peft_model.py` (_cpt_forward). One deviation: the
query's types are shifted past the context's by 4 · ⌈max type / 4⌉, the next example's slot; peft shifts by
the maximum type itself, which is the same when the context ends with a label (a complete example) and
otherwise turns the query's labels into template tokens (peft's defaults, context [0] of type 1, then give a
loss of NaN: no label left). tests/reference_impls/test_cpt.py compares outputs, loss, gradients and the
projected update with peft on tiny Llama.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import family, freeze_base
from reference_impls._prompts import check_positions


@dataclass
class CPTConfig:
    n_virtual_tokens: int = 1          # context length n (must equal len(token_ids) when those are given)
    epsilon: float = 0.1               # L2 bound on the delta of input tokens, times √(d_model / 2048)
    format_epsilon: float = 0.1        # L2 bound on the delta of template tokens, times √(d_model / 2048)
    loss_decay_factor: float = 1.0     # weight ratio between the labels of successive examples ("decay")
    weighted_loss: str = "none"        # none | decay
    token_ids: tuple[int, ...] = ()    # the context's tokens; () -> n_virtual_tokens copies of token 0 (peft's [0])
    type_mask: tuple[int, ...] = ()    # per context token: 4e+1..4e+4 (see the docstring); () -> all 1


def is_label(types: torch.Tensor) -> torch.Tensor:
    return (types > 0) & (types % 4 == 0)


class CPTModel(nn.Module):
    """Wraps a causal LM; forward takes its usual arguments plus an optional (B, T) `input_type_mask`."""

    def __init__(self, model: nn.Module, config: CPTConfig) -> None:
        super().__init__()
        n = config.n_virtual_tokens
        ids = list(config.token_ids) or [0] * n
        types = list(config.type_mask) or [1] * len(ids)
        if len(ids) != n or len(types) != n:
            raise ValueError(f"token_ids ({len(ids)}) and type_mask ({len(types)}) must both have "
                             f"n_virtual_tokens = {n} entries")
        if any(t < 0 for t in types):
            raise ValueError("type_mask entries must be >= 0")
        if config.weighted_loss not in ("none", "decay"):
            raise ValueError(f"weighted_loss must be 'none' or 'decay', not '{config.weighted_loss}'")
        self.model, self.config = model, model.config
        self.decay = config.loss_decay_factor if config.weighted_loss == "decay" else 1.0
        E = model.get_input_embeddings().weight  # (V, d_model)
        d = E.shape[1]
        self.register_buffer("token_ids", torch.tensor(ids))  # (n,)
        self.register_buffer("types", torch.tensor(types))    # (n,)
        self.register_buffer("context", E[self.token_ids].detach().clone())  # (n, d_model), frozen E(c)
        kind = self.types % 4
        scale = math.sqrt(d / 2048)  # the paper's bounds are stated for LLaMA-sized embeddings
        eps = torch.zeros(n)  # label and ignored tokens: radius 0, never changed
        eps[(self.types > 0) & ((kind == 1) | (kind == 3))] = config.format_epsilon * scale
        eps[(self.types > 0) & (kind == 2)] = config.epsilon * scale
        self.register_buffer("epsilon", eps)  # (n,)
        self.register_buffer("updatable", (self.types > 0) & (kind != 0))  # (n,) input and template tokens
        self.delta = nn.Parameter(torch.zeros(n, d))  # (n, d_model), zero: the raw context at init

    def prompt(self) -> torch.Tensor:  # (n, d_model)
        return self.context + self.delta * self.updatable[:, None].to(self.delta.dtype)

    @torch.no_grad()
    def project_(self) -> None:
        """Δ_i ← Δ_i · min(1, ε_i / ‖Δ_i‖): back into each token's ball (label tokens' radius is 0)."""
        norm = self.delta.norm(dim=1)  # (n,)
        outside = norm > self.epsilon
        self.delta[outside] *= (self.epsilon[outside] / norm[outside])[:, None]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, input_type_mask: torch.Tensor | None = None, **kwargs):
        B, T = input_ids.shape
        n = self.context.shape[0]
        check_positions(self.config, n, T)
        x = self.model.get_input_embeddings()(input_ids)  # (B, T, d_model)
        x = torch.cat([self.prompt().to(x.dtype).expand(B, -1, -1), x], dim=1)  # (B, n+T, d_model)
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask.new_ones(B, n), attention_mask], dim=1)  # (B, n+T)
        out = self.model(inputs_embeds=x, attention_mask=attention_mask, **kwargs)
        if labels is not None:
            out.loss = self.loss(out.logits, labels, input_type_mask)
        return out

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, input_type_mask: torch.Tensor | None) -> torch.Tensor:
        """Weighted next-token loss over the label tokens of the context and of the query."""
        B, T = labels.shape
        query = input_type_mask if input_type_mask is not None else torch.full_like(labels, 4)  # (B, T)
        slot = 4 * math.ceil(int(self.types.max()) / 4)  # the query is the example after the context's
        query = torch.where(query > 0, query + slot, query)
        types = torch.cat([self.types.expand(B, -1), query], dim=1)  # (B, n+T)
        targets = torch.cat([self.token_ids.expand(B, -1), labels], dim=1)  # (B, n+T)
        types, targets = types[:, 1:], targets[:, 1:]  # position t predicts token t+1
        counted = is_label(types) & (targets != -100)  # (B, n+T-1)
        ce = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), reduction="none",
                             ignore_index=-100).view(B, -1)  # (B, n+T-1)
        weights = torch.ones_like(ce)
        for i in range(B):  # the k-th most recent example's labels weigh decay^k
            for k, example in enumerate(types[i][counted[i]].unique().flip(0)):
                weights[i][types[i] == example] = self.decay ** k
        return (ce * weights)[counted].mean()


def training_hooks(model: CPTModel, config: CPTConfig) -> dict[str, Callable[..., Any]]:
    return {"after_step": lambda step: model.project_()}


def apply(model: nn.Module, config: CPTConfig) -> nn.Module:
    if family(model) not in ("llama", "gpt2"):
        raise ValueError(f"CPT trains a causal language model's next-token loss; this is a {family(model)} model")
    freeze_base(model)
    return CPTModel(model, config)
