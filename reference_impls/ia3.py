"""(IA)³: Infused Adapter by Inhibiting and Amplifying Inner Activations.

Equation:   attention keys and values  k = l_k ⊙ (W_k x),   v = l_v ⊙ (W_v x)
            feed-forward               h = W_down (l_ff ⊙ act(W_up x))     (l_ff rescales the input of W_down)
Trainable:  d_out per rescaled attention module, d_in per feed-forward one: 2 * n_kv_heads * d_head + d_ff
            per layer with the default targets     (catalog: trainable_params.per_target, with is_ffn)
Paper:      "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning",
            Haokun Liu et al., 2022 (NeurIPS 2022), arXiv 2205.05638.

The vectors start at one, so the adapted model starts equal to the base model, and they fold into the
weights (rows of W_k, W_v; columns of W_down), so the method is mergeable. A fused projection (GPT-2's
q|k|v c_attn, Phi-3's qkv_proj) is rescaled whole, queries included, as peft does and the catalog counts;
the paper, written for T5, rescales keys and values only. On T5 the roles k and v name the self-attention
only (see _core); the paper and peft also rescale the decoder's cross-attention keys and values.

Checked against: the authors' code github.com/r-three/t-few @114deced (configs/ia3.json: lora_layers
"k|v|wi_1.*" in SelfAttention, EncDecAttention and DenseReluDense, only multi_lora_b trained, i.e. one
output-rescaling vector per layer, initialised to ones (lora_init_scale 0); rescaling wi_1's output in
T5's gated FFN is rescaling the input of wo, as here); peft 0.21.2 `peft/tuners/ia3/layer.py` (ones init,
feedforward layers rescale the input; the oracle test compares counts and outputs with IA3Model). The
paper's text was not re-read in this pass. Numeric pins: test_ia3.py re-computes W_down (l_ff ⊙ x) and
GPT-2's whole fused projection by hand, and matches peft's outputs on BERT, T5, Llama and GPT-2.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._core import Target, Wrapper, find_targets, freeze_base, linear_dims, linear_weight, replace_modules


@dataclass
class IA3Config:
    target_modules: tuple[str, ...] = ("k", "v", "down")  # roles or module-name suffixes
    feedforward_modules: tuple[str, ...] = ("down",)      # targets whose *input* is rescaled (l_ff)


class IA3Linear(Wrapper):
    """Rescale all output features of `base`, or (feedforward) all of its input features.

    `out_features` narrows the output rescaling to a slice (ones elsewhere); `apply` passes the whole output."""

    def __init__(self, base: nn.Module, out_features: slice, scale_input: bool) -> None:
        super().__init__()
        d_in, d_out = linear_dims(base)
        self.base = base
        self.scale_input = scale_input
        self.features = slice(0, d_in) if scale_input else out_features
        n = self.features.stop - self.features.start
        # ones: the rescaled layer starts identical to the base layer
        self.l = nn.Parameter(torch.ones(n))  # (d_in,) for feedforward, else (len(slice of d_out),)
        self.d = d_in if scale_input else d_out
        self.merged = False

    def scale(self) -> torch.Tensor:
        """The full rescaling vector, ones outside the adapted slice."""
        s, f = self.l, self.features
        if f.start == 0 and f.stop == self.d:  # the usual case; skip the copy
            return s
        return torch.cat([s.new_ones(f.start), s, s.new_ones(self.d - f.stop)])  # (d,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        if self.merged:
            return self.base(x)
        if self.scale_input:
            return self.base(x * self.scale())
        return self.base(x) * self.scale()  # (B, T, d_out); the bias is rescaled too, as in peft

    @torch.no_grad()
    def _fold(self, s: torch.Tensor) -> None:
        W = linear_weight(self.base)  # (d_out, d_in)
        if self.scale_input:
            W.mul_(s[None, :])  # column j of W sees input feature j
        else:
            W.mul_(s[:, None])
            if self.base.bias is not None:
                self.base.bias.mul_(s)

    def merge(self) -> None:
        if not self.merged:
            self._fold(self.scale())
            self.merged = True

    def unmerge(self) -> None:
        if self.merged:  # exact only while no entry of l is 0
            self._fold(1 / self.scale())
            self.merged = False


def apply(model: nn.Module, config: IA3Config) -> nn.Module:
    freeze_base(model)
    ff = config.feedforward_modules
    feedforward = {t.name for t in find_targets(model, ff)} if ff else set()

    def wrap(t: Target) -> IA3Linear:  # a fused q|k|v is rescaled whole (peft), not just t.out_features
        return IA3Linear(t.module, slice(0, linear_dims(t.module)[1]), scale_input=t.name in feedforward)

    replace_modules(model, config.target_modules, wrap)
    return model

