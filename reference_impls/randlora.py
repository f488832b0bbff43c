"""RandLoRA: full-rank parameter-efficient fine-tuning with shared random bases.

Equation:   ΔW = (alpha / r) Σ_{j=1}^{n} B_j Λ_j A Γ_j,   n = ⌈min(d_in, d_out) / r⌉
            B_j ∈ R^{d_max × r}, A ∈ R^{r × d_min}: frozen random, shared by every adapted layer
            Λ_j = diag(λ_j) ∈ R^{r × r}, Γ_j = diag(γ_j) ∈ R^{d_min × d_min}: trained
            h = W0 x + ΔW x, with the B side on the larger of d_in, d_out and the A Γ side on the smaller
Trainable:  ((min(d_in, d_out) + r - 1) // r) * (r + min(d_in, d_out)) per targeted module
            (catalog: trainable_params.per_target)
Paper:      "RandLoRA: Full-rank parameter-efficient fine-tuning of large models", Paul Albert et al., 2025
            (ICLR 2025), arXiv 2502.00987.

n bases of rank r together span min(d_in, d_out) dimensions, so the update can have full rank while only
the diagonals are trained, r + d_min numbers per basis. As in peft, one random A (r × d_min) serves every
basis (Γ_j makes each A Γ_j distinct), and the random tensors are drawn once per model at the largest
shapes among the targeted modules, from a CPU generator seeded with `projection_prng_key`, then divided
by their standard deviation; each layer uses the leading slices. Dense bases are Kaiming-uniform (peft's
_kaiming_init), A first, then B one basis at a time, drawn and normalised in bfloat16 as peft does (on a
machine without bf16 support peft draws in float16 and its bases differ); sparse ones (sparse=True) are
ternary: uniform draws below 1/6 become −1, above 5/6 become +1, the rest 0.

Basis pairing, as peft computes it: B is stored as (d_max, n, r) and flattened basis-major, (λ A γ) as
(r, n, d_min) flattened rank-major, and column i of the one meets row i of the other; so B_j above is
column block j of B's flattening read as (d_max, r, n). Any fixed re-indexing of i.i.d. columns is another
random basis, so this is the paper's form with a particular draw of B_j.

Initialisation: λ = 0, so ΔW = 0 and the adapted model starts equal to the base model; γ starts at
1 / max(n, d_min) (peft). ΔW is linear in each trained diagonal and merges into W0.

Checked against: the paper's method section (a sum of scaled random bases, trainable diagonal Λ and Γ,
n = rank / r bases for a full-rank update, alpha / r scaling); peft 0.21.2 `peft/tuners/randlora/layer.py`
(get_scaled_bases, UniqueBaseGrad, forward, get_delta_weight) and `model.py` (_find_dim,
_init_randlora_A_randlora_B and its sparse form); the oracle tests compare outputs, gradients and merged
weights with peft's RandLoraModel on the same random bases.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import AdditiveUpdate, find_targets, freeze_base, linear_dims, replace_module


@dataclass
class RandLoRAConfig:
    r: int = 32                                   # rank of each random basis
    alpha: float = 640                            # the update is scaled by alpha / r
    dropout: float = 0.0                          # dropout on the input of the RandLoRA branch
    sparse: bool = False                          # ternary sparse random bases
    projection_prng_key: int = 0                  # seed of the shared random bases
    target_modules: tuple[str, ...] = ("q", "v")  # roles or module-name suffixes


def n_bases(d_min: int, r: int) -> int:
    return -(-d_min // r)  # ⌈d_min / r⌉: enough rank-r bases to reach rank d_min


def random_bases(d_max: int, d_min: int, r: int, seed: int, sparse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared pair: A (r, 1, d_min), one matrix for every basis, and B (d_max, n, r); unit std each."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    n = n_bases(d_min, r)
    if sparse:
        A, B = torch.rand((r, 1, d_min), generator=g), torch.rand((d_max, n, r), generator=g)
        A, B = [torch.where(t < 1 / 6, -1.0, torch.where(t > 5 / 6, 1.0, 0.0)) for t in (A, B)]  # ternary
    else:  # Kaiming-uniform (a = sqrt(5)); the scale is divided out below, only the shape of the law matters.
        # Drawn and normalised in bfloat16, as peft does where bf16 is available: the draws then match peft's
        A = nn.init.kaiming_uniform_(torch.empty(r, 1, d_min, dtype=torch.bfloat16), a=math.sqrt(5), generator=g)
        B = torch.cat([nn.init.kaiming_uniform_(torch.empty(d_max, 1, r, dtype=torch.bfloat16), a=math.sqrt(5),
                                                generator=g) for _ in range(n)], dim=1)
    return (A / A.std()).float(), (B / B.std()).float()


class RandLoRALinear(AdditiveUpdate):
    def __init__(self, base: nn.Module, A: torch.Tensor, B: torch.Tensor, r: int, alpha: float,
                 dropout: float = 0.0) -> None:
        super().__init__()
        d_in, d_out = linear_dims(base)
        self.base = base
        self.register_buffer("A", A)  # (r, 1, d_min_max), shared by every layer
        self.register_buffer("B", B)  # (d_max_max, n_max, r), shared by every layer
        self.d_in, self.d_out = d_in, d_out
        self.d_min, self.d_max = min(d_in, d_out), max(d_in, d_out)
        self.n = n_bases(self.d_min, r)
        self.scaling = alpha / r
        # zero init: Λ = 0 makes ΔW = 0, so the wrapped layer starts identical to the base layer
        self.lam = nn.Parameter(torch.zeros(r, self.n))                                         # (r, n): λ_j as columns
        self.gamma = nn.Parameter(torch.full((self.n, self.d_min), 1 / max(self.n, self.d_min)))  # (n, d_min): γ_j as rows
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Bf, M): ΔW / scaling = Bf M when d_in <= d_out, Mᵀ Bfᵀ otherwise."""
        Bf = self.B[: self.d_max, : self.n, :].flatten(1)                              # (d_max, n r), basis-major
        A = self.A[:, :, : self.d_min]                                                 # (r, 1, d_min)
        M = (self.lam[:, :, None] * A * self.gamma[None]).flatten(0, 1)                # λ_j[k] A[k] ⊙ γ_j: (r n, d_min)
        return Bf, M

    def delta_weight(self) -> torch.Tensor:
        Bf, M = self.factors()
        dW = Bf @ M if self.d_in <= self.d_out else M.T @ Bf.T  # (d_out, d_in)
        return self.scaling * dW

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        h = self.base(x)  # (B, T, d_out)
        if self.merged:
            return h
        Bf, M = self.factors()
        down, up = (M, Bf) if self.d_in <= self.d_out else (Bf.T, M.T)  # (n r, d_in), (d_out, n r)
        return h + F.linear(F.linear(self.dropout(x), down), up) * self.scaling


def apply(model: nn.Module, config: RandLoRAConfig) -> nn.Module:
    freeze_base(model)
    targets = find_targets(model, config.target_modules)
    dims = [linear_dims(t.module) for t in targets]
    d_in, d_out = max(d for d, _ in dims), max(d for _, d in dims)  # the largest shape, as peft's _find_dim
    A, B = random_bases(max(d_in, d_out), min(d_in, d_out), config.r, config.projection_prng_key, config.sparse)
    for t in targets:
        replace_module(model, t.name, RandLoRALinear(t.module, A, B, config.r, config.alpha, config.dropout))
    return model
