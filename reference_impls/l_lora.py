"""L-LoRA: partially linearised LoRA, fine-tuned in the tangent space of its initialisation.

Equation:   f_lin(x; φ) = f(x; θ0, φ0) + J_φ f(x; θ0, φ0) (φ - φ0),    φ = {A_l, B_l} of every LoRA module l
            (a first-order Taylor expansion in the LoRA parameters only; the frozen backbone θ0 stays
            non-linear), computed with one Jacobian-vector product (torch.func.jvp) per forward.
            Each LoRA module is LoRA's:  h = W0 x + (alpha / r) B A x.
            Task arithmetic over linearised adapters:  φ = φ0 + λ Σ_t τ_t,   τ_t = φ_t - φ0
Trainable:  r * (d_in + d_out) per targeted module (A and B)   (catalog: trainable_params.per_target)
Paper:      "Parameter Efficient Multi-task Model Fusion with Partial Linearization", Anke Tang et al., 2023
            (ICLR 2024), arXiv 2310.04742.

Because f_lin is affine in φ, adding task vectors adds their effects on the logits exactly:
f_lin(φ0 + Σ τ_t) - f_lin(φ0) = Σ_t (f_lin(φ0 + τ_t) - f_lin(φ0)), the weight disentanglement the paper
aims for (test_l_lora.py checks it, and that plain LoRA lacks it).

Init: LoRA's (A ~ Kaiming-uniform, B = 0), so f_lin starts equal to the base model. A consequence the
paper's construction inherits from that init: at φ0 every path through A passes through B0 = 0, so
∂f/∂A(φ0) = 0 and A receives zero gradients: the linearised model trains B against the fixed random A0.
Deviations: (1) the linearisation point φ0 is drawn from a generator seeded by `init_seed` and the module's
position (as LoRA-FA's frozen A), so it is regenerated rather than saved, and a saved adapter (φ) reloads
onto the same φ0; (2) the paper's equation linearises the whole model in φ, as here, while the authors'
code (tanganke/peta, LinearizedModelWraper) wraps each LoRA module separately, which keeps the layers'
composition non-linear. Not mergeable: J_φ f (φ - φ0) is not a weight change of the network.
The loss is token-level cross-entropy on the linearised logits (BERT MLM, causal LMs with HF's shift, T5
with the labels as decoder targets; T5 needs labels in every forward, as its decoder inputs come from them).

Checked against: the paper's equation as quoted above (first-order expansion in the LoRA parameters,
task arithmetic on φ); the statement about the authors' code (tanganke/peta, LinearizedModelWraper)
comes from an earlier read and was not re-fetched at a pinned commit in this pass. peft has no L-LoRA.
Numeric pins: test_l_lora.py checks f_lin against f(φ0) + J_φ f (φ - φ0) computed independently, that
f_lin is affine in φ, and that task vectors add exactly (plain LoRA does not).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from reference_impls._core import family, freeze_base, replace_modules
from reference_impls.lora import LoRALinear


@dataclass
class LLoRAConfig:
    r: int = 8                                    # LoRA rank
    alpha: float = 16                             # the update is scaled by alpha / r
    target_modules: tuple[str, ...] = ("q", "v")  # roles or module-name suffixes (LoRA's placement)
    init_seed: int = 0                            # seeds φ0 (module i uses init_seed + i), regenerated, never saved


@dataclass
class LinearizedOutput:
    logits: torch.Tensor               # (B, T, vocab)
    loss: torch.Tensor | None = None   # () token-level cross-entropy, when labels are given


class LLoRAModel(nn.Module):
    """The base model with LoRA modules, run as its first-order Taylor expansion in the LoRA parameters."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]  # φ
        for i, n in enumerate(self.names):
            # φ0: the linearisation point, a frozen copy of the init (non-persistent: regenerated from the seed)
            self.register_buffer(f"phi0_{i}", model.get_parameter(n).detach().clone(), persistent=False)

    @property
    def config(self) -> Any:  # HF's config, which data helpers and the targeting code read
        return self.model.config

    def phi(self) -> dict[str, torch.Tensor]:
        return {n: self.model.get_parameter(n) for n in self.names}

    def phi_0(self) -> dict[str, torch.Tensor]:
        return {n: getattr(self, f"phi0_{i}") for i, n in enumerate(self.names)}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> LinearizedOutput:
        phi, phi0 = self.phi(), self.phi_0()
        tangent = {n: phi[n] - phi0[n] for n in self.names}  # φ - φ0

        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if family(self.model) == "t5":  # the decoder's inputs are the labels shifted right (HF builds them)
            inputs["decoder_input_ids"] = self.model._shift_right(labels)

        def f(params: dict[str, torch.Tensor]) -> torch.Tensor:
            return functional_call(self.model, params, (), inputs).logits

        with sdpa_kernel(SDPBackend.MATH):  # the fused CPU attention kernels have no forward-mode derivative
            out0, dout = jvp(f, (phi0,), (tangent,))  # f(φ0), J(φ0)(φ - φ0): both (B, T, vocab)
        logits = out0 + dout
        return LinearizedOutput(logits, None if labels is None else self.loss(logits, labels))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if family(self.model) in ("llama", "gpt2"):  # causal LMs predict the next token (HF's shift)
            logits, labels = logits[:, :-1], labels[:, 1:]
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)


class LinearizedLoRALinear(LoRALinear):
    def merge(self) -> None:
        raise NotImplementedError("the linearised model's update J (φ - φ0) is not a weight change")

    unmerge = merge


def task_vector(model: LLoRAModel) -> dict[str, torch.Tensor]:
    """τ = φ - φ0 of a trained linearised adapter."""
    phi0 = model.phi_0()
    return {n: (p - phi0[n]).detach().clone() for n, p in model.phi().items()}


@torch.no_grad()
def set_task_arithmetic(model: LLoRAModel, task_vectors: list[dict[str, torch.Tensor]], lam: float = 1.0) -> None:
    """φ = φ0 + λ Σ_t τ_t (the paper's fusion of linearised adapters)."""
    phi0 = model.phi_0()
    for n, p in model.phi().items():
        p.copy_(phi0[n] + lam * sum(tv[n] for tv in task_vectors))


def apply(model: nn.Module, config: LLoRAConfig) -> nn.Module:
    freeze_base(model)
    layers = replace_modules(model, config.target_modules,
                             lambda t: LinearizedLoRALinear(t.module, config.r, config.alpha))
    with torch.no_grad():
        for i, layer in enumerate(layers):
            g = torch.Generator().manual_seed(config.init_seed + i)
            bound = 1 / math.sqrt(layer.A.shape[1])  # Kaiming-uniform(a=√5), LoRA's init of A, seeded
            layer.A.copy_(torch.empty(layer.A.shape).uniform_(-bound, bound, generator=g))
    return LLoRAModel(model)
