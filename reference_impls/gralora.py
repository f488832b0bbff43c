"""GraLoRA: Granular Low-Rank Adaptation (k × k blocks, each with its own rank-r/k LoRA).

Equation:   h = W0 x + s ΔW dropout(x),   s = alpha / (r + hybrid_r)
            ΔW = [B_jn A_nj]_{j,n=1..k} + B_h A_h:  the d_out × d_in update split into k × k blocks, block (j, n)
            a rank-(r/k) product of B_jn ∈ R^{(d_out/k) × (r/k)} and A_nj ∈ R^{(r/k) × (d_in/k)}, plus an
            optional ordinary LoRA of rank hybrid_r over the whole matrix (B_h A_h)
Trainable:  (r + hybrid_r) * (d_in + d_out) per targeted module      (catalog: trainable_params.per_target)
Paper:      "GraLoRA: Granular Low-Rank Adaptation for Parameter-Efficient Fine-Tuning", Yeonjoon Jung et al.,
            2025 (NeurIPS 2025), arXiv 2505.20355.

Same parameter count as a rank-r LoRA, but the update can reach rank k · r (k² blocks of rank r / k), and
each block sees only its own slice of the input, so one large input feature (an outlier channel) no longer
dominates the gradient of the whole update, which is the paper's argument against plain LoRA at high rank.

Storage (as in peft): A[n] ∈ R^{(d_in/k) × r} maps input slice x_n to r numbers, the chunk j (r/k of them)
of which feeds output block j; B[j] ∈ R^{r × (d_out/k)} reads the j-chunks from all k input slices. So
A_nj = A[n][:, chunk j]ᵀ and B_jn = B[j][chunk n]ᵀ.

Initialisation: A Kaiming-uniform, B = 0 (and B_h = 0), so the model starts unchanged; the update merges
into W0.

Checked against: the paper (block-wise LoRA, r / k rank per block, the hybrid variant); peft 0.21.2
`peft/tuners/gralora/layer.py` (gralora_A (k, d_in/k, r), gralora_B (k, r, d_out/k), the chunk exchange in
forward, scaling alpha / (r + hybrid_r), the general A/B of the hybrid part).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import AdditiveUpdate, freeze_base, kaiming_uniform_, linear_dims, replace_modules


@dataclass
class GraLoRAConfig:
    r: int = 32                 # total rank; each of the k × k blocks gets r / k
    k: int = 2                  # blocks per side
    hybrid_r: int = 0           # rank of an extra ordinary LoRA over the whole matrix
    alpha: float = 64           # the update is scaled by alpha / (r + hybrid_r)
    dropout: float = 0.0        # dropout on the input of the adapter branch
    target_modules: tuple[str, ...] = ("q", "v")


class GraLoRALinear(AdditiveUpdate):
    def __init__(self, base: nn.Module, r: int, k: int, hybrid_r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        d_in, d_out = linear_dims(base)
        if d_in % k or d_out % k or r % k:
            raise ValueError(f"k = {k} must divide d_in = {d_in}, d_out = {d_out} and r = {r}")
        self.base, self.r, self.k, self.scaling = base, r, k, alpha / (r + hybrid_r)
        A = torch.stack([kaiming_uniform_(torch.empty(r, d_in // k)) for _ in range(k)])  # (k, r, d_in/k)
        self.A = nn.Parameter(A.transpose(1, 2).contiguous())  # (k, d_in/k, r), A[n] reads input slice n
        self.B = nn.Parameter(torch.zeros(k, r, d_out // k))   # (k, r, d_out/k), B[j] writes output block j
        self.hybrid = hybrid_r > 0
        if self.hybrid:
            self.A_h = nn.Parameter(kaiming_uniform_(torch.empty(hybrid_r, d_in)))  # (hybrid_r, d_in)
            self.B_h = nn.Parameter(torch.zeros(d_out, hybrid_r))                    # (d_out, hybrid_r)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """s ΔW block by block: block (j, n) = B_jn A_nj, each of rank <= r / k."""
        k, c = self.k, self.r // self.k
        rows = []
        for j in range(k):
            blocks = [self.B[j, n * c:(n + 1) * c].T @ self.A[n][:, j * c:(j + 1) * c].T for n in range(k)]
            rows.append(torch.cat(blocks, dim=1))  # (d_out/k, d_in)
        delta = torch.cat(rows, dim=0)  # (d_out, d_in)
        if self.hybrid:
            delta = delta + self.B_h @ self.A_h
        return self.scaling * delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        h = self.base(x)
        if self.merged:
            return h
        x = self.dropout(x)
        k = self.k
        z = torch.einsum("...ni,nir->...nr", x.unflatten(-1, (k, -1)), self.A)  # (B, T, k slices, r)
        z = z.unflatten(-1, (k, -1)).transpose(-3, -2).flatten(-2)  # (B, T, k out blocks, r): chunk j of every slice
        y = torch.einsum("...jr,jro->...jo", z, self.B).flatten(-2)  # (B, T, d_out)
        if self.hybrid:
            y = y + F.linear(F.linear(x, self.A_h), self.B_h)
        return h + self.scaling * y


def apply(model: nn.Module, config: GraLoRAConfig) -> nn.Module:
    freeze_base(model)
    replace_modules(model, config.target_modules, lambda t: GraLoRALinear(
        t.module, config.r, config.k, config.hybrid_r, config.alpha, config.dropout))
    return model
