"""PiSSA: Principal Singular values and Singular vectors Adaptation.

Equation:   W = U S Vᵀ (SVD of the pretrained weight, d_out × d_in)
            A = sqrt(S_r / s) V_rᵀ ∈ R^{r × d_in},   B = U_r sqrt(S_r / s) ∈ R^{d_out × r},   s = alpha / r
            W_res = W − s B A  (frozen),   h = W_res x + s B A x
Trainable:  r * (d_in + d_out) per targeted module      (catalog: trainable_params.per_target)
Paper:      "PiSSA: Principal Singular Values and Singular Vectors Adaptation of Large Language Models",
            Fanxu Meng et al., 2024 (NeurIPS 2024), arXiv 2404.02948.

The architecture is LoRA's (lora.py's LoRALinear); only the initialisation differs. The r principal
singular components of W move into the adapter and the frozen base keeps the residual, so s B A + W_res
= W and the model starts out equal to the base model (up to float rounding), while training updates the
principal components directly. The paper sets alpha = r (s = 1); for other alpha, S_r is divided by s
before the square root so that s B A is still U_r S_r V_rᵀ (peft's rule).

`niter` chooses the fast randomised SVD (torch.svd_lowrank with `niter` subspace iterations, the paper's
fast-SVD option, peft's init_lora_weights="pissa_niter_<niter>"); niter=None computes the full SVD (peft's "pissa").
The randomised SVD draws from torch's global generator.

Checked against: the paper's method section (the adapter takes the r principal singular values and
vectors, each factor with S_r^{1/2}; the frozen residual keeps the other components; the paper writes
h = x W, so its A and B are our B and A transposed); peft 0.21.2 `peft/tuners/lora/layer.py`
(LoraLayer.pissa_init); the oracle tests compare A, B and W_res with peft's initialisation of the same
weights, then outputs, gradients and merged weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._core import Target, freeze_base, linear_dims, linear_weight, replace_modules
from reference_impls.lora import LoRALinear


@dataclass
class PiSSAConfig:
    r: int = 128                                 # principal components moved into the adapter
    alpha: float = 128                           # the update is scaled by alpha / r (the authors set alpha = r)
    niter: int | None = 16                       # randomised-SVD iterations; None: full SVD
    target_modules: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")  # every linear layer of a block


def principal_factors(W: torch.Tensor, r: int, scaling: float, niter: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with scaling · B A = U_r S_r V_rᵀ, the rank-r truncated SVD of W (d_out, d_in)."""
    W = W.detach().float()
    if niter is None:
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)  # (d_out, k), (k,), (k, d_in)
        U, S, Vh = U[:, :r], S[:r], Vh[:r]
    else:
        U, S, V = torch.svd_lowrank(W, q=r, niter=niter)      # (d_out, r), (r,), (d_in, r)
        Vh = V.T
    root = torch.sqrt(S / scaling)  # (r,); dividing by the scaling keeps scaling · B A = U S Vᵀ
    return root[:, None] * Vh, U * root  # A: (r, d_in), B: (d_out, r)


def pissa_linear(t: Target, r: int, alpha: float, niter: int | None) -> LoRALinear:
    d_in, d_out = linear_dims(t.module)
    if r > min(d_in, d_out):
        raise ValueError(f"r={r} exceeds min(d_in, d_out) = {min(d_in, d_out)} of {t.name}, "
                         "so W has fewer than r singular components")
    W = linear_weight(t.module)  # (d_out, d_in) view of the base weight
    # the SVD first: the randomised one then draws the same numbers as peft's pissa_init after the same seed
    A, B = principal_factors(W, r, alpha / r, niter)
    layer = LoRALinear(t.module, r, alpha)
    with torch.no_grad():
        layer.A.copy_(A)
        layer.B.copy_(B)
        W.sub_((layer.scaling * B @ A).to(W.dtype))  # the frozen residual: scaling · B A + W_res = W
    return layer


def apply(model: nn.Module, config: PiSSAConfig) -> nn.Module:
    freeze_base(model)
    replace_modules(model, config.target_modules, lambda t: pissa_linear(t, config.r, config.alpha, config.niter))
    return model
