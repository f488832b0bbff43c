"""Laplace-LoRA: a post-hoc Laplace approximation over the LoRA parameters, for calibrated predictions.

Equation:   fine-tune LoRA as usual (h = W0 x + (alpha / r) B A x) to θ_MAP = {A, B}; then
            posterior      p(θ | D) ≈ N(θ_MAP, Σ),   Σ = (F + λ I)^{-1}
            F              curvature of the negative log-likelihood at θ_MAP (here: diagonal empirical Fisher,
                           F = Σ_tokens (∂ log p(y_t | x) / ∂θ)², one gradient per predicted token)
            prior          θ ~ N(0, λ^{-1} I); λ maximises the Laplace marginal likelihood
                           log p(D | λ) ≈ log p(D | θ_MAP) - λ/2 ‖θ_MAP‖² + P/2 log λ
                                          - 1/2 Σ_i log(F_i + λ)
            predictive     linearised model:  f_lin(x; θ) = f(x; θ_MAP) + J(x) (θ - θ_MAP),
                           p(y | x, D) ≈ 1/S Σ_s softmax(f(x; θ_MAP) + J(x) ε_s),   ε_s ~ N(0, Σ)
                           (J ε_s is one Jacobian-vector product: an exact sample of the Gaussian logits
                           N(f(x; θ_MAP), J Σ Jᵀ) of the linearised predictive)
Trainable:  r * (d_in + d_out) per targeted module (the LoRA factors)  (catalog: trainable_params.per_target)
Paper:      "Bayesian Low-rank Adaptation for Large Language Models", Adam X. Yang et al., 2023 (ICLR 2024),
            arXiv 2308.13111.

Deviations: the paper uses Kronecker-factored (K-FAC) curvature with a low-rank approximation of the large
factor, and a closed-form approximation of the Gaussian-logit softmax; this reference uses the diagonal
empirical Fisher (the "diagonal" option the Laplace literature and the paper's baselines use) and Monte
Carlo samples of the same Gaussian logits. λ is chosen on a log-spaced grid rather than by gradient
ascent. Training is plain LoRA (init A Kaiming-uniform, B = 0, so the model starts equal to the base
model); the posterior is fitted afterwards by `fit_laplace` and used by `predictive`. The posterior mean
is an ordinary LoRA update (merge() folds it), but calibrated predictions need the posterior, so the
method as a whole is not mergeable.

Checked against: the paper's method as summarised above (Laplace posterior over the LoRA parameters,
marginal-likelihood choice of the prior precision, linearised Gaussian-logit predictive); the paper's
full text and the authors' code were not re-read at a pinned commit in this pass. peft has no
Laplace-LoRA. Numeric pins: test_laplace_lora.py re-computes the diagonal Fisher as the sum of squared
per-token gradients and checks that the chosen λ maximises the stated marginal likelihood on its grid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from reference_impls._core import family, freeze_base, replace_modules
from reference_impls.lora import LoRALinear


@dataclass
class LaplaceLoRAConfig:
    r: int = 8                                    # LoRA rank
    alpha: float = 16                             # the update is scaled by alpha / r
    target_modules: tuple[str, ...] = ("q", "v")  # roles or module-name suffixes (LoRA's placement)
    prior_precision: float = 0.0                  # λ; 0 = choose it by the Laplace marginal likelihood
    n_samples: int = 64                           # S: Monte Carlo samples of the linearised predictive


@dataclass
class Posterior:
    mean: dict[str, torch.Tensor]      # θ_MAP, one tensor per LoRA parameter
    fisher: dict[str, torch.Tensor]    # diagonal F, same shapes
    prior_precision: float             # λ
    log_likelihood: float              # log p(D | θ_MAP) on the fitting data

    def variance(self) -> dict[str, torch.Tensor]:
        return {n: 1.0 / (f + self.prior_precision) for n, f in self.fisher.items()}  # diag Σ


def apply(model: nn.Module, config: LaplaceLoRAConfig) -> nn.Module:
    freeze_base(model)
    replace_modules(model, config.target_modules, lambda t: LoRALinear(t.module, config.r, config.alpha))
    return model


def token_log_probs(model: nn.Module, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(y_t | x) of every predicted token: (N,). Causal LMs predict the next token (HF's shift)."""
    if getattr(model, "config", None) is not None and family(model) in ("llama", "gpt2"):
        logits, labels = logits[:, :-1], labels[:, 1:]
    logp = F.log_softmax(logits.float(), dim=-1)                                # (B, T, V)
    return logp.gather(-1, labels[..., None]).squeeze(-1).flatten()            # (N,)


def lora_params(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def log_marginal_likelihood(post: Posterior, prior_precision: float) -> float:
    """The Laplace approximation of log p(D | λ), up to λ-independent constants."""
    lam = prior_precision
    sq = sum((m ** 2).sum().item() for m in post.mean.values())
    P = sum(m.numel() for m in post.mean.values())
    logdet = sum(torch.log(f + lam).sum().item() for f in post.fisher.values())
    return post.log_likelihood - lam / 2 * sq + P / 2 * math.log(lam) - logdet / 2


def fit_laplace(model: nn.Module, batches: list[dict[str, torch.Tensor]], config: LaplaceLoRAConfig) -> Posterior:
    """Diagonal empirical Fisher at the trained LoRA parameters, and the prior precision."""
    params = lora_params(model)
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    log_lik = 0.0
    model.eval()
    for batch in batches:
        logp = token_log_probs(model, model(input_ids=batch["input_ids"],
                                            attention_mask=batch.get("attention_mask")).logits, batch["labels"])
        log_lik += logp.sum().item()
        for t in range(logp.numel()):  # one gradient per token: F = Σ_t g_t²
            grads = torch.autograd.grad(logp[t], list(params.values()), retain_graph=t + 1 < logp.numel())
            for n, g in zip(params, grads):
                fisher[n] += g ** 2
    post = Posterior({n: p.detach().clone() for n, p in params.items()}, fisher, config.prior_precision, log_lik)
    if config.prior_precision <= 0:  # empirical Bayes: the grid point with the largest marginal likelihood
        grid = torch.logspace(-4, 4, 81).tolist()
        post.prior_precision = max(grid, key=lambda lam: log_marginal_likelihood(post, lam))
    return post


@torch.no_grad()
def predictive(model: nn.Module, post: Posterior, batch: dict[str, torch.Tensor], n_samples: int,
               seed: int = 0) -> torch.Tensor:
    """p(y | x, D) of the linearised model, (B, T, V), averaged over n_samples Gaussian logit samples."""
    g = torch.Generator().manual_seed(seed)
    std = {n: v.sqrt() for n, v in post.variance().items()}
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch.get("attention_mask")}

    def f(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(model, params, (), inputs).logits

    model.eval()
    probs = 0.0
    for _ in range(n_samples):
        eps = {n: s * torch.randn(s.shape, generator=g) for n, s in std.items()}  # ε ~ N(0, Σ)
        with sdpa_kernel(SDPBackend.MATH):  # the fused CPU attention kernels have no forward-mode derivative
            out, d_out = jvp(f, (post.mean,), (eps,))  # f(x; θ_MAP), J(x) ε: (B, T, V)
        probs = probs + F.softmax(out + d_out, dim=-1)
    return probs / n_samples


def map_probs(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The point-estimate (MAP) prediction the Laplace predictive is compared with: (B, T, V)."""
    with torch.no_grad():
        model.eval()
        return F.softmax(model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits, -1)
