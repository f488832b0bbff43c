"""X-LoRA: frozen LoRA experts mixed token by token by a scaling head that reads the model's hidden states.

Equation:   pass 1 (no gradient): run the model with every expert scaled by the constant c (scaling_pass_value,
              0: the base model), keep the last hidden states H ∈ R^{B × T × d_model};
            scalings:  λ = softmax(f(H) / τ) ∈ R^{B × T × n_adapters}, f = one linear layer (xlora_depth = 1) or an
              MLP d_model → xlora_size → ... → n_adapters with ReLU (and dropout xlora_dropout_p) between layers;
              with layerwise_scalings f predicts one λ per adapted module, else λ is shared by all of them;
              with top_k_lora only each token's k largest λ are kept (the others set to 0);
            pass 2: every adapted module computes  h = W0 x + Σ_i λ_i(token) · (alpha / r) B_i A_i x.
Trainable:  the scaling head only (the experts and the model frozen):
            (d_model + 1) * n_adapters  for xlora_depth = 1, else
            (d_model + 1) * xlora_size + (xlora_depth - 2) * (xlora_size + 1) * xlora_size + (xlora_size + 1) * n_adapters
            (catalog: trainable_params.total; layerwise_scalings multiplies the output layer's n_adapters by the number
            of adapted modules, and use_trainable_adapters adds the experts' n_adapters · r (d_in + d_out) per module)
Paper:      "X-LoRA: Mixture of Low-Rank Adapter Experts, a Flexible Framework for Large Language Models with
            Applications in Protein Mechanics and Molecular Design", Eric L. Buehler and Markus J. Buehler, 2024
            (APL Machine Learning), arXiv 2402.07148.

The experts. X-LoRA mixes LoRA adapters trained beforehand, each on its own domain; `load_experts` copies
their A and B in. Until then the experts are stand-ins drawn from a generator seeded with `expert_seed`
(both factors Kaiming-uniform, as peft's LoRA with init_lora_weights=False), like VeRA's seeded frozen
matrices: reproducible from the config, so a saved scaling head loads onto the same experts. Because the
experts are not zero, the model does not start as the base model. Not mergeable: the mixture changes token
by token.

Supported: decoders and BERT (one sequence per example, whose last hidden states score its own tokens); not
T5, whose encoder and decoder sequences differ in length.

Checked against: the paper (the dual forward pass with dummy scalings, the scaling head on the hidden
states, token- and layer-wise mixing of the adapters' outputs); peft 0.21.2 `peft/tuners/xlora/classifier.py`
(head layout, temperature softmax, scaling_pass_value 0, hidden_states[-1]) and `layer.py` (x scaled by λ_i
before expert i; top-k masking); tests/reference_impls/test_xlora.py loads the same experts into peft's
XLoraModel and compares outputs, gradients and the trainable count on tiny Llama (peft's adapter loader
rejects BERT's key names).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import Wrapper, family, freeze_base, linear_dims, replace_modules


@dataclass
class XLoraConfig:
    n_adapters: int = 0                  # LoRA experts mixed (peft: len(adapters); 0 mixes nothing)
    xlora_depth: int = 1                 # linear layers in the scaling head
    xlora_size: int = 2048               # hidden width of the scaling head (unused at depth 1)
    layerwise_scalings: bool = False     # one set of scalings per adapted module instead of one shared set
    top_k_lora: int | None = None        # keep each token's k largest scalings; None mixes all experts
    softmax_temperature: float = 1.0     # τ of the softmax over the experts
    use_trainable_adapters: bool = False  # train the experts too
    xlora_dropout_p: float = 0.2         # dropout between the head's layers (depth > 1)
    scaling_pass_value: float = 0.0      # the constant scaling of every expert in the first pass
    r: int = 8                           # the experts' LoRA rank
    alpha: float = 16                    # the experts' LoRA alpha (update scaled by alpha / r)
    target_modules: tuple[str, ...] = ("q", "v")  # where the experts sit
    expert_seed: int = 0                 # seed of the stand-in experts


class Scalings:
    """The per-token expert scalings of the current pass, shared by the wrapper and every expert layer."""

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None  # (B, T, n_layers, n_adapters)


class XLoraLinear(Wrapper):
    def __init__(self, base: nn.Module, index: int, scalings: Scalings, n_adapters: int, r: int, alpha: float,
                 generator: torch.Generator) -> None:
        super().__init__()
        d_in, d_out = linear_dims(base)
        self.base, self.index, self.scalings, self.scale = base, index, scalings, alpha / r
        bound = lambda fan_in: 1 / math.sqrt(fan_in)  # kaiming_uniform(a=√5): U(-1/√fan_in, 1/√fan_in)
        self.A = nn.Parameter(torch.empty(n_adapters, r, d_in).uniform_(-bound(d_in), bound(d_in), generator=generator))
        self.B = nn.Parameter(torch.empty(n_adapters, d_out, r).uniform_(-bound(r), bound(r), generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        lam = self.scalings.value[:, :, self.index]  # (B, T, n_adapters)
        expert = torch.einsum("btd,nrd->btnr", x, self.A)  # (B, T, n_adapters, r)
        expert = torch.einsum("btnr,nor->btno", expert, self.B)  # (B, T, n_adapters, d_out)
        return self.base(x) + self.scale * torch.einsum("btn,btno->bto", lam.to(x.dtype), expert)


def scaling_head(d_model: int, n_out: int, config: XLoraConfig) -> nn.Sequential:
    if config.xlora_depth < 1:
        raise ValueError("xlora_depth must be at least 1")
    if config.xlora_depth == 1:
        return nn.Sequential(nn.Linear(d_model, n_out))
    layers: list[nn.Module] = []
    width = d_model
    for _ in range(config.xlora_depth - 1):
        layers += [nn.Linear(width, config.xlora_size), nn.ReLU()]
        if config.xlora_dropout_p > 0:
            layers.append(nn.Dropout(config.xlora_dropout_p))
        width = config.xlora_size
    return nn.Sequential(*layers, nn.Linear(width, n_out))


class XLoraModel(nn.Module):
    """Wraps an HF model: forward runs the scaling pass, predicts the scalings, then runs the mixed pass."""

    def __init__(self, model: nn.Module, config: XLoraConfig) -> None:
        super().__init__()
        n = config.n_adapters
        if n < 1:
            raise ValueError("n_adapters is 0: X-LoRA needs LoRA experts to mix (set n_adapters, then load_experts)")
        if config.top_k_lora is not None and not 1 <= config.top_k_lora <= n:
            raise ValueError(f"top_k_lora must be in 1..n_adapters ({n})")
        if family(model) == "t5":
            raise ValueError("X-LoRA's token-wise scalings need one sequence per example; T5's encoder and "
                             "decoder sequences differ")
        self.model, self.config, self.xlora = model, model.config, config
        self.scalings = Scalings()
        g = torch.Generator().manual_seed(config.expert_seed)
        counter = iter(range(10**9))
        self.layers = replace_modules(model, config.target_modules, lambda t: XLoraLinear(
            t.module, next(counter), self.scalings, n, config.r, config.alpha, g))
        for layer in self.layers:
            layer.A.requires_grad_(config.use_trainable_adapters)
            layer.B.requires_grad_(config.use_trainable_adapters)
        n_out = n * len(self.layers) if config.layerwise_scalings else n
        self.head = scaling_head(model.get_input_embeddings().weight.shape[1], n_out, config)

    def predict_scalings(self, hidden: torch.Tensor) -> torch.Tensor:
        """λ from the scaling pass's last hidden states. (B, T, d_model) -> (B, T, n_layers, n_adapters)"""
        B, T, _ = hidden.shape
        L, n = len(self.layers), self.xlora.n_adapters
        logits = self.head(hidden)  # (B, T, n) or (B, T, L * n)
        logits = logits.view(B, T, L, n) if self.xlora.layerwise_scalings else logits[:, :, None].expand(B, T, L, n)
        lam = F.softmax(logits / self.xlora.softmax_temperature, dim=-1)  # (B, T, L, n)
        if self.xlora.top_k_lora is not None:
            keep = torch.zeros_like(lam, dtype=torch.bool).scatter_(-1, lam.topk(self.xlora.top_k_lora, dim=-1).indices,
                                                                     True)
            lam = lam * keep
        return lam

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, **kwargs):
        B, T = input_ids.shape
        with torch.no_grad():  # pass 1: every expert at the constant scaling_pass_value
            self.scalings.value = torch.full((B, T, len(self.layers), self.xlora.n_adapters),
                                             self.xlora.scaling_pass_value, device=input_ids.device)
            hidden = self.model(input_ids=input_ids, output_hidden_states=True, **kwargs).hidden_states[-1]
        self.scalings.value = self.predict_scalings(hidden)
        try:
            return self.model(input_ids=input_ids, labels=labels, **kwargs)  # pass 2: the mixture
        finally:
            self.scalings.value = None


@torch.no_grad()
def load_experts(model: XLoraModel, experts: list[dict[str, tuple[torch.Tensor, torch.Tensor]]]) -> None:
    """Copy trained LoRA experts in: experts[i][module name] = (A (r, d_in), B (d_out, r)) of expert i."""
    names = {id(m): name for name, m in model.model.named_modules()}
    if len(experts) != model.xlora.n_adapters:
        raise ValueError(f"expected {model.xlora.n_adapters} experts, got {len(experts)}")
    for layer in model.layers:
        for i, expert in enumerate(experts):
            A, B = expert[names[id(layer)]]
            layer.A[i].copy_(A)
            layer.B[i].copy_(B)


def apply(model: nn.Module, config: XLoraConfig) -> nn.Module:
    freeze_base(model)
    return XLoraModel(model, config)
