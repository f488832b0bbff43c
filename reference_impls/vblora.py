"""VB-LoRA: LoRA factors composed from a shared vector bank.

Equation:   h = W0 x + B A dropout(x),   A ∈ R^{r × d_in},  B ∈ R^{d_out × r}
            every length-b sub-vector u of A's rows and B's columns is a top-k mixture of the bank V ∈ R^{h × b}:
            u = Σ_{i ∈ topk(z_u)} softmax(z_u restricted to its top k)_i · V_i,   z_u ∈ R^h trained logits
Trainable:  r * num_vectors * (d_in + d_out) / vector_length per targeted module, plus
            num_vectors * vector_length once for the bank  (catalog: trainable_params.per_target and total)
Paper:      "VB-LoRA: Extreme Parameter Efficient Fine-Tuning with Vector Banks", Yang Li et al., 2024,
            arXiv 2405.15179.

One bank of h = num_vectors vectors of length b = vector_length is shared by every adapted layer (a single
parameter, counted once); each layer trains only logits that pick and weigh k bank vectors per sub-vector.
A's row i is cut into d_in / b sub-vectors, B's column j into d_out / b. After training, only the top-k
indices and weights need be stored (the paper's count; peft's save_only_topk_weights); this reference
always saves the full logits, so `save_only_topk_weights` is recorded but not used here.

Initialisation (peft): bank ~ U(−init_vector_bank_bound, init_vector_bank_bound), logits ~ N(0,
init_logits_std²). Neither factor is zero, so unlike LoRA the adapted model does not start exactly at the
base model (ΔW is small: the bank entries are at most 0.02). ΔW = B A merges into W0.

Checked against: the paper's method section (sub-vectors of the LoRA factors as differentiable top-k
admixtures of a shared bank); peft 0.21.2 `peft/tuners/vblora/layer.py` (_get_low_rank_matrix,
_get_lora_matrices: A reshaped from (r, d_in / b, b), B from (d_out / b, r, b) transposed; forward) and
`model.py` (_init_vblora_vector_bank); the oracle tests compare outputs, gradients (logits and bank) and
merged weights with peft's VBLoRAModel.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import AdditiveUpdate, find_targets, freeze_base, linear_dims, replace_module


@dataclass
class VBLoRAConfig:
    r: int = 4                                    # rank of the composed factors
    num_vectors: int = 256                        # vectors in the shared bank (h)
    vector_length: int = 256                      # length b of each bank vector; divides d_in and d_out
    topk: int = 2                                 # bank vectors mixed into each sub-vector
    save_only_topk_weights: bool = False          # peft's storage option; this reference saves the full logits
    dropout: float = 0.0                          # dropout on the input of the VB-LoRA branch
    init_vector_bank_bound: float = 0.02          # bank ~ U(-bound, bound)
    init_logits_std: float = 0.1                  # logits ~ N(0, std^2)
    target_modules: tuple[str, ...] = ("q", "v")  # roles or module-name suffixes


def admix(logits: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """(..., h) logits -> (..., b) sub-vectors: softmax over the top k logits weighs those bank vectors."""
    top, index = logits.topk(k, dim=-1)                            # (..., k)
    return (F.softmax(top, dim=-1)[..., None] * bank[index]).sum(-2)  # bank[index]: (..., k, b)


class VBLoRALinear(AdditiveUpdate):
    def __init__(self, base: nn.Module, name: str, bank: nn.Parameter, r: int, topk: int, logits_std: float,
                 dropout: float = 0.0) -> None:
        super().__init__()
        d_in, d_out = linear_dims(base)
        h, b = bank.shape
        if d_in % b or d_out % b:
            raise ValueError(f"VB-LoRA: vector_length {b} must divide d_in = {d_in} and d_out = {d_out} of {name}")
        self.base, self.bank, self.topk = base, bank, topk  # the bank is the same Parameter in every layer
        self.logits_A = nn.Parameter(torch.randn(r, d_in // b, h) * logits_std)   # (r, d_in / b, h)
        self.logits_B = nn.Parameter(torch.randn(d_out // b, r, h) * logits_std)  # (d_out / b, r, h)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.logits_A.shape[0]
        A = admix(self.logits_A, self.bank, self.topk).reshape(r, -1)                  # (r, d_in / b, b) -> (r, d_in)
        B = admix(self.logits_B, self.bank, self.topk).transpose(1, 2).reshape(-1, r)  # (d_out / b, b, r) -> (d_out, r)
        return A, B

    def delta_weight(self) -> torch.Tensor:
        A, B = self.factors()
        return B @ A  # (d_out, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        h = self.base(x)  # (B, T, d_out)
        if self.merged:
            return h
        A, B = self.factors()
        return h + F.linear(F.linear(self.dropout(x), A), B)


def apply(model: nn.Module, config: VBLoRAConfig) -> nn.Module:
    freeze_base(model)
    bank = nn.Parameter(torch.empty(config.num_vectors, config.vector_length).uniform_(
        -config.init_vector_bank_bound, config.init_vector_bank_bound))  # (h, b), shared by every layer
    for t in find_targets(model, config.target_modules):
        replace_module(model, t.name, VBLoRALinear(t.module, t.name, bank, config.r, config.topk,
                                                   config.init_logits_std, config.dropout))
    return model
