"""OLoRA: Orthonormal Low-Rank Adaptation.

Equation:   W = Q R (reduced QR of the pretrained weight, d_out × d_in)
            B = Q[:, :r] ∈ R^{d_out × r},   A = R[:r, :] ∈ R^{r × d_in},   s = alpha / r
            W_res = W − s B A  (frozen),   h = W_res x + s B A x
Trainable:  r * (d_in + d_out) per targeted module      (catalog: trainable_params.per_target)
Paper:      "OLoRA: Orthonormal Low-Rank Adaptation of Large Language Models", Kerim Büyükakyüz, 2024,
            arXiv 2406.01775.

The architecture is LoRA's (lora.py's LoRALinear); only the initialisation differs: B starts with
orthonormal columns (the first r columns of Q) and A with the matching rows of R, and the scaled product
is taken out of the frozen weight, so the model starts out equal to the base model (up to float
rounding). Unlike PiSSA, B A is not rescaled by 1 / s before it is subtracted: W_res = W − s Q_r R_r.

Deviation: peft applies the QR to the stored weight tensor, which for GPT-2's Conv1D is Wᵀ (d_in, d_out);
here the QR is always of W as (d_out, d_in), so B stays (d_out, r) on every architecture.

Checked against: the paper's method section (QR decomposition of W, the first r columns of Q and rows
of R as the adapter's initial factors, the weight adjusted by their scaled product); peft 0.21.2
`peft/tuners/lora/layer.py` (LoraLayer.olora_init); the oracle tests compare A, B and W_res with peft's
initialisation of the same weights, then outputs, gradients and merged weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._core import Target, freeze_base, linear_dims, linear_weight, replace_modules
from reference_impls.lora import LoRALinear


@dataclass
class OLoRAConfig:
    r: int = 8                                   # rank of the update
    alpha: float = 8                             # the update is scaled by alpha / r
    target_modules: tuple[str, ...] = ("q", "v")  # roles or module-name suffixes


def olora_linear(t: Target, r: int, alpha: float) -> LoRALinear:
    d_in, d_out = linear_dims(t.module)
    if r > min(d_in, d_out):
        raise ValueError(f"r={r} exceeds min(d_in, d_out) = {min(d_in, d_out)} of {t.name}, "
                         "so the QR factors have fewer than r columns")
    layer = LoRALinear(t.module, r, alpha)
    W = linear_weight(layer.base)  # (d_out, d_in) view of the base weight
    Q, R = torch.linalg.qr(W.detach().float())  # Q: (d_out, k), orthonormal columns; R: (k, d_in); k = min(d_in, d_out)
    with torch.no_grad():
        layer.B.copy_(Q[:, :r])  # (d_out, r)
        layer.A.copy_(R[:r])     # (r, d_in)
        W.sub_((layer.scaling * layer.B @ layer.A).to(W.dtype))  # the frozen residual: s B A + W_res = W
    return layer


def apply(model: nn.Module, config: OLoRAConfig) -> nn.Module:
    freeze_base(model)
    replace_modules(model, config.target_modules, lambda t: olora_linear(t, config.r, config.alpha))
    return model
