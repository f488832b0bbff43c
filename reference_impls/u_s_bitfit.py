"""U/S-BitFit: BitFit's bias terms pruned to a budget by a first-order estimate of their effect on the loss.

Equation:   search: train every bias difference δ (b = b0 + δ, BitFit) for search_steps steps; then score
                entry i:            S_i = |δ_i · ∂L/∂δ_i|          (U-BitFit, unstructured)
                bias vector v:      S_v = |Σ_{i∈v} δ_i · ∂L/∂δ_i|   (S-BitFit, structured)
            (first-order Taylor estimate of the loss change from pruning, i.e. resetting δ to 0:
             L(δ with δ_i = 0) - L(δ) ≈ -δ_i ∂L/∂δ_i, summed over the vector for a structure)
            prune to the budget k = n_bias * keep_ratio // 1: the k best entries (U), or whole vectors in
            order of S_v while they fit (S); then train the kept biases from their pretrained values
Trainable:  n_bias * keep_ratio // 1 (catalog: trainable_params.total): exactly for U-BitFit; at most that
            for S-BitFit (a sum of whole vector sizes); 0 for bias-free models (Llama, T5)
Paper:      "Neural Architecture Search for Parameter-Efficient Fine-tuning of Large Pre-trained Language
            Models", Neal Lawton, Anoop Kumar, Govind Thattai, Aram Galstyan, Greg Ver Steeg, 2023
            (Findings of ACL 2023), arXiv 2305.16597.

Recalled, not checked against the paper's text: the exact form of the first-order score (taken here as
the Taylor estimate above, gradients accumulated over the search data), one pruning step rather than
several, and re-training the pruned architecture from the pretrained biases. The kept biases are sparse
deltas on the frozen pretrained biases (reference_impls/_partial.py); merging adds them in. Search data:
pass `data` to apply(); without it the built-in synthetic task is used (tests only).
Checked against: the paper's abstract (arXiv 2305.16597: NAS for PET architectures by structured and
unstructured pruning) and a secondary summary (pruning guided by a first-order approximation of the
loss); the method section was not read, so the points listed above stay recalled; no authors' code or
peft tuner exists to compare with. The tests pin the score δ ⊙ ∂L/∂δ after the BitFit search, the
unstructured top-k and the structured greedy fill.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from reference_impls._partial import (Batch, attach_deltas, base_parameters, budget, deltas, default_data,
                                      top_k)


@dataclass
class USBitFitConfig:
    mode: str = "structured"   # structured (S-BitFit: whole bias vectors) or unstructured (U-BitFit: entries)
    keep_ratio: float = 0.5    # share of the model's bias parameters left after pruning (the budget)
    search_steps: int = 100    # Adam steps training all biases before they are scored
    search_lr: float = 1e-3    # learning rate of the search phase


def is_bias(name: str) -> bool:
    return name.split(".")[-1] == "bias"


def search_scores(model: nn.Module, config: USBitFitConfig, data: list[Batch]) -> dict[str, torch.Tensor]:
    """Train all bias differences on a copy, then δ_i · ∂L/∂δ_i per entry (signed; summed over `data`)."""
    trial = copy.deepcopy(model)
    bias = {n: None for n in base_parameters(trial) if is_bias(n)}
    found = attach_deltas(trial, bias)  # dense δ on every bias, zero: BitFit
    opt = torch.optim.Adam([d.values for d in found.values()], lr=config.search_lr)
    trial.train()
    for step in range(config.search_steps):
        opt.zero_grad(set_to_none=True)
        trial(**data[step % len(data)]).loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    for batch in data:  # ∂L/∂δ at the searched δ, accumulated over the search data
        trial(**batch).loss.backward()
    return {n: (d.values * d.values.grad).detach() for n, d in found.items()}


def select(scores: dict[str, torch.Tensor], config: USBitFitConfig) -> dict[str, torch.Tensor]:
    """Kept positions per bias: top-k entries by |score| (U), or whole vectors by |Σ score| while they fit (S)."""
    k = budget(sum(s.numel() for s in scores.values()), config.keep_ratio)
    if config.mode == "unstructured":
        return top_k({n: s.abs() for n, s in scores.items()}, k)
    if config.mode != "structured":
        raise ValueError(f"unknown mode '{config.mode}'; use structured or unstructured")
    kept, used = {}, 0
    for name in sorted(scores, key=lambda n: -scores[n].sum().abs().item()):  # best vectors first
        n = scores[name].numel()
        if used + n <= k:
            kept[name], used = torch.arange(n), used + n
    return kept


def apply(model: nn.Module, config: USBitFitConfig, data: Iterable[Batch] | None = None) -> nn.Module:
    if not any(is_bias(n) for n in base_parameters(model)):
        attach_deltas(model, {})  # a bias-free model (Llama, T5): nothing to search, nothing to train
        return model
    data = list(data) if data is not None else default_data(model, 16)
    kept = select(search_scores(model, config, data), config)
    attach_deltas(model, kept)  # re-trained from the pretrained biases: δ = 0
    return model


def kept_count(model: nn.Module) -> int:
    return sum(d.values.numel() for d in deltas(model))
