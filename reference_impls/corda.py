"""CorDA: Context-oriented Decomposition Adaptation (LoRA initialised from an SVD of W C).

Equation:   C = mean over calibration sequences of X̃ᵀ X̃,  X̃ = X / |max X|   (X: a sequence's inputs, T × d_in)
            C' = C + δ mean(diag C) I   (δ from 0.01, doubled until C' inverts accurately)
            W0 C' = U diag(S) Vh  (SVD),   V = (Vh C'⁻¹)ᵀ,   so that W0 = U diag(S) Vᵀ
            ipm: the r largest components, kpm: the r smallest;  A = diag(√(S_r / s)) V_rᵀ,  B = U_r diag(√(S_r / s))
            W0' = W0 − s B A,   h = W0' x + s B A x,   s = alpha / r
Trainable:  r * (d_in + d_out) per targeted module, as LoRA     (catalog: trainable_params.per_target)
Paper:      "CorDA: Context-Oriented Decomposition Adaptation of Large Language Models for Task-Aware
            Parameter-Efficient Fine-tuning", Yibo Yang et al., 2024 (NeurIPS 2024), arXiv 2406.05223.

The decomposition of W0 is oriented by the covariance of the layer's inputs on some data: the components
with the largest S carry what those inputs use most. Instruction-previewed adaptation (ipm) trains those,
with task data; knowledge-preserved adaptation (kpm) trains the smallest ones and freezes the rest, with
data from the knowledge to keep (e.g. question answering). Either way the frozen residual W0 − s B A plus
the adapter is W0, so the model starts unchanged; the layer is LoRA's (reference_impls/lora.py) and merges.

Data: pass `data` (an iterable of batches) to apply(); each sequence is run on its own, as peft's hook
expects. Without data the covariance comes from the built-in synthetic task (_core.synthetic_batch), which
is only meaningful for tests.

Checked against: the paper (covariance-oriented SVD, ipm and kpm); peft 0.21.2 `peft/tuners/lora/corda.py`
(calib_cov_distribution: the per-sequence X / |max X| and the mean of XᵀX; collect_eigens_for_layer: the
damping loop with the 0.05 inverse-error bound, SVD of W C', V = (Vh C'⁻¹)ᵀ; crop_corda_eigens) and
`layer.py` (corda_init: S / scaling, the √S split between A and B, W0 − scaling B A).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from reference_impls._core import find_targets, linear_weight, synthetic_batch
from reference_impls.lora import LoRAConfig, LoRALinear, apply as lora_apply

Batch = dict[str, torch.Tensor]


@dataclass
class CorDAConfig:
    r: int = 8                       # rank of B A
    alpha: float = 8                 # the update is scaled by alpha / r
    corda_method: str = "ipm"        # ipm: adapt the r largest components; kpm: the r smallest
    target_modules: tuple[str, ...] = ("q", "v")


@torch.no_grad()
def input_covariances(model: nn.Module, names: list[str], data: Iterable[Batch]) -> dict[str, torch.Tensor]:
    """Module name -> mean over sequences of X̃ᵀ X̃ (d_in, d_in), X̃ the sequence's inputs over |their max|."""
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(names, 0)

    def hook(name):
        def record(module, inputs, output):
            X = inputs[0].squeeze(0).float()  # (T, d_in): one sequence
            X = X / X.max().abs()
            sums[name] = sums.get(name, 0) + X.T @ X
            counts[name] += 1
        return record

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    was_training = model.training
    model.eval()
    try:
        for batch in data:
            for i in range(len(batch["input_ids"])):
                model(**{k: v[i:i + 1] for k, v in batch.items()})
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not all(counts.values()):
        raise ValueError("CorDA needs at least one calibration sequence")
    return {n: sums[n] / counts[n] for n in names}


def context_svd(W: torch.Tensor, C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U, S, V with W = U diag(S) Vᵀ, from the SVD of W C' (C' the damped covariance)."""
    eye = torch.eye(C.shape[0], dtype=C.dtype, device=C.device)
    damp = 0.01
    while True:  # damp until C' is safely invertible (peft's test: ||C' C'⁻¹ − I|| < 0.05)
        C_damped = C + damp * C.diagonal().mean() * eye
        C_inv = torch.linalg.inv(C_damped)
        if torch.dist(C_damped @ C_inv, eye) < 0.05:
            break
        damp *= 2
    U, S, Vh = torch.linalg.svd(W @ C_damped, full_matrices=False)  # (d_out, m), (m,), (m, d_in)
    return U, S, (Vh @ C_inv).T  # V: (d_in, m)


@torch.no_grad()
def init_from_context(layer: LoRALinear, C: torch.Tensor, corda_method: str) -> None:
    W = linear_weight(layer.base)  # (d_out, d_in), a view: the offset below edits the module's weight
    U, S, V = context_svd(W.float(), C)
    keep = slice(0, layer.r) if corda_method == "ipm" else slice(len(S) - layer.r, len(S))
    root = (S[keep] / layer.scaling).sqrt()  # (r,)
    layer.A.copy_(root[:, None] * V[:, keep].T)  # (r, d_in)
    layer.B.copy_(U[:, keep] * root)             # (d_out, r)
    W.sub_(layer.delta_weight())  # the frozen residual: W0 − s B A


def apply(model: nn.Module, config: CorDAConfig, data: Iterable[Batch] | None = None) -> nn.Module:
    if config.corda_method not in ("ipm", "kpm"):
        raise ValueError(f"corda_method must be ipm or kpm, got '{config.corda_method}'")
    names = [t.name for t in find_targets(model, config.target_modules)]
    covariances = input_covariances(model, names, data if data is not None else [synthetic_batch(model)])
    lora_apply(model, LoRAConfig(r=config.r, alpha=config.alpha, target_modules=config.target_modules))
    for name in names:
        init_from_context(model.get_submodule(name), covariances[name], config.corda_method)
    return model
