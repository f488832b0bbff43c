"""CoDA (Conditional Adapter): a light adapter for every token, the frozen layer for the top-k tokens only.

Equation:   per layer, with X ∈ R^{n × d} the layer input (paper Sec. 3, Fig. 2):
              s = X w_r                                     router scores, (n,)
              λ = SoftTopK(s, k),  λ_i = σ((s_i − τ) / ε)   with τ such that Σ_i λ_i = k
              I = the k tokens with the largest s           (k = ceil(n / reduction_factor))
              Y = X + Adapter(X)                           for every token (parallel adapter)
              Y_I += λ_I ⊙ (F(X_I) − X_I)                   F = the frozen pretrained layer, run on X_I only
            Adapter(X) = ReLU(X W_down + b_down) W_up + b_up. Tokens outside I never enter F: the heavy
            layer costs O(k) tokens instead of O(n), which is where the speed-up comes from.
Trainable:  2 * d_model * bottleneck + bottleneck + 2 * d_model per layer   (adapter + router w_r ∈ R^d)
            (catalog: per_layer)
Paper:      "Conditional Adapters: Parameter-efficient Transfer Learning with Fast Inference", Tao Lei
            et al., 2023 (NeurIPS 2023), arXiv 2304.04947.

Soft top-k: the paper obtains λ from an entropy-regularised optimisation (maximise s·λ + ε H(λ) subject
to Σλ = k, 0 ≤ λ ≤ 1) solved iteratively; with the binary entropy H that problem's solution is the
sigmoid above, so here τ is found by bisection and its gradient is taken by implicit differentiation
(∂τ/∂s_j = σ'_j / Σ_i σ'_i), which keeps Σλ = k under the update.
What the selected tokens see: the frozen layer runs on the k selected tokens alone (their attention is
over the selected tokens), which is the conditional computation of the paper's Fig. 2; F(X_I) − X_I is
the layer's update to those tokens (for post-LN BERT: the layer output minus its input).
Scope of this file: encoder (BERT-style) models, where each layer sees the whole sequence at once and
absolute positions were added before the first layer (the paper applies CoDA to T5's encoder, and to
vision and speech encoders). Not implemented: the paper's light pre-training phase before fine-tuning,
its separate routers for attention queries and keys/values, and decoder-side routing. The defaults
(bottleneck, reduction_factor 3 as in its text experiments, temperature) are not all checked against
the paper. At init the model does not equal the base model (unselected tokens skip the frozen layers).
Not mergeable: routing is input-dependent.

Checked against: the paper's method section as summarised above (Sec. 3 and Fig. 2: router scores, soft
top-k with entropy regularisation, the frozen layer on the selected tokens only, the parallel adapter on
all tokens; abstract: arXiv 2304.04947); the full text's appendix on the soft top-k solver and the
pre-training recipe was not re-read in this pass, nor was any released code consulted. peft has no CoDA.
Numeric pins: test_coda.py re-computes λ = σ((s − τ)/ε) (one τ per row, Σλ = k) and its implicit
Jacobian σ'_i/ε (δ_ij − σ'_j / Σσ'), and the layer output X + Adapter(X) + λ_I (F(X_I) − X_I) token by
token.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._core import arch_symbols, family, freeze_base, replace_module
from reference_impls._adapters import blocks, hidden_of
from reference_impls.sequential_adapter import Bottleneck


@dataclass
class CoDAConfig:
    bottleneck: int = 64         # the parallel adapter's hidden size
    reduction_factor: int = 3    # k = ceil(n / reduction_factor) tokens go through each frozen layer
    temperature: float = 1.0     # ε of the soft top-k (smaller: closer to a hard 0/1 selection)
    bisection_steps: int = 30    # iterations to find τ (the gap to Σλ = k shrinks by 2 per step)


def soft_top_k(s: torch.Tensor, k: int, eps: float, steps: int = 30) -> torch.Tensor:
    """λ = σ((s − τ)/ε) with Σ λ = k along the last axis; s: (B, n) -> λ: (B, n), each in (0, 1)."""
    with torch.no_grad():
        lo = s.min(-1, keepdim=True).values - 20 * eps  # Σλ(lo) ≈ n ≥ k
        hi = s.max(-1, keepdim=True).values + 20 * eps  # Σλ(hi) ≈ 0 ≤ k
        for _ in range(steps):
            tau = (lo + hi) / 2  # (B, 1)
            too_many = torch.sigmoid((s - tau) / eps).sum(-1, keepdim=True) > k
            lo = torch.where(too_many, tau, lo)
            hi = torch.where(too_many, hi, tau)
        tau = (lo + hi) / 2
        lam = torch.sigmoid((s - tau) / eps)
        w = lam * (1 - lam)  # σ' up to 1/ε: the implicit derivative's weights
        w = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
    # τ as a function of s with the implicit gradient ∂τ/∂s_j = w_j (its value is unchanged)
    tau = tau + (w * (s - s.detach())).sum(-1, keepdim=True)
    return torch.sigmoid((s - tau) / eps)


def _gather_mask(mask: torch.Tensor | None, I: torch.Tensor, n: int) -> torch.Tensor | None:
    """The additive attention mask restricted to the selected tokens; I: (B, k)."""
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4:
        return mask
    B, k = I.shape
    if mask.shape[-1] == n:
        mask = torch.gather(mask.expand(B, *mask.shape[1:]), 3, I[:, None, None, :].expand(B, mask.shape[1], mask.shape[2], k))
    if mask.shape[-2] == n:
        mask = torch.gather(mask, 2, I[:, None, :, None].expand(B, mask.shape[1], k, mask.shape[3]))
    return mask


class CoDALayer(nn.Module):
    """A frozen Transformer layer run on the top-k tokens, plus a parallel adapter on all tokens."""

    def __init__(self, base: nn.Module, d: int, m: int, r: int, eps: float, steps: int) -> None:
        super().__init__()
        self.base = base
        self.adapter = Bottleneck(d, m, "relu")  # W_up = 0 at init: the adapter starts silent
        # router w_r: normal with std 1/sqrt(d), so scores of unit-scale hidden states are O(1) and the
        # first selections are neither all ties nor saturated
        self.router = nn.Parameter(torch.randn(d) / math.sqrt(d))  # (d,)
        self.r, self.eps, self.steps = r, eps, steps
        self.last_selected: torch.Tensor | None = None  # (B, k) indices of the last forward, for tests

    def forward(self, X: torch.Tensor, attention_mask: torch.Tensor | None = None, *args, **kwargs) -> tuple:
        B, n, d = X.shape
        k = math.ceil(n / self.r)
        s = X @ self.router                                          # (B, n)
        lam = soft_top_k(s, k, self.eps, self.steps)                 # (B, n)
        I = s.topk(k, dim=-1).indices.sort(-1).values                # (B, k), kept in sequence order
        self.last_selected = I
        idx = I[..., None].expand(B, k, d)                           # (B, k, d)
        X_I = torch.gather(X, 1, idx)                                # (B, k, d)
        out = self.base(X_I, _gather_mask(attention_mask, I, n), *args, **kwargs)  # heavy path
        F_I = hidden_of(out)                                         # (B, k, d)
        Y = X + self.adapter(X)                                      # (B, n, d), light path, every token
        lam_I = torch.gather(lam, 1, I)[..., None]                   # (B, k, 1)
        Y = Y.scatter_add(1, idx, lam_I * (F_I - X_I))               # only the selected rows change
        return Y if isinstance(out, torch.Tensor) else (Y,)          # transformers 5.x blocks return a tensor


def apply(model: nn.Module, config: CoDAConfig) -> nn.Module:
    if family(model) != "bert":
        raise ValueError("this CoDA implementation routes tokens of encoder (BERT-style) models only")
    freeze_base(model)
    d = arch_symbols(model.config)["d_model"]
    for name, block in blocks(model):
        replace_module(model, name, CoDALayer(block, d, config.bottleneck, config.reduction_factor,
                                              config.temperature, config.bisection_steps))
    return model
