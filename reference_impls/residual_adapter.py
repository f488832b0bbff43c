"""Residual adapter (Lin, Madotto and Fung): one layer-normalised bottleneck adapter after every block.

Equation:   Adapter(H) = (ReLU(LN(H) W_E)) W_D + H,   W_E ∈ R^{d × b}, W_D ∈ R^{b × d}
            applied to the output H of every Transformer block (paper Sec. 2, Fig. 1); LN has its own
            gain and bias, W_E and W_D have biases, b = bottleneck.
Trainable:  2 * d_model + 2 * d_model * bottleneck + bottleneck + d_model per layer   (catalog: per_layer)
Paper:      "Exploring Versatile Generative Language Model Via Parameter-Efficient Transfer Learning",
            Zhaojiang Lin et al., 2020 (Findings of EMNLP 2020), arXiv 2004.03829.

The adapter sits after the whole block (after its last residual connection and, in post-LN models such as
BERT, after its last layer norm), as in the authors' code (zlinao/VGLM, modeling_vlm.py). The layer norm
starts as the identity affine map (gain 1, bias 0, PyTorch's default); W_D and its bias start at exactly
zero (the authors' code uses a small normal init), so the adapted model starts equal to the base model.
The paper also trains task-specific embeddings and heads; they are not part of this file (nor of the
catalog count). On T5 every encoder and decoder block gets an adapter. Not mergeable: the layer norm and
the ReLU sit inside the branch.
Checked against: the authors' code github.com/zlinao/VGLM @39e094f1, pytorch_transformers/modeling_vlm.py
(Adapter: LayerNorm, project_down, ReLU, project_up, x + branch; the Block calls its task's adapter,
MixAdapter, on the block's output; bottleneck_map gives per-task sizes 10 to 300); the paper's abstract.
Sec. 2's equation was not re-read in this pass.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._adapters import attach_after_block, blocks
from reference_impls._core import arch_symbols, freeze_base


@dataclass
class ResidualAdapterConfig:
    bottleneck: int = 100  # b, the adapter's hidden size (chosen per task in the paper)


class ResidualAdapterBlock(nn.Module):
    """H + W_D ReLU(W_E LN(H)): the residual adapter, applied to a block's output."""

    def __init__(self, d_model: int, b: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d_model)  # its own gain and bias (2 d), init 1 and 0
        self.down = nn.Linear(d_model, b)  # W_E: (b, d), nn.Linear's Kaiming-uniform init
        self.up = nn.Linear(b, d_model)    # W_D: (d, b)
        # zero init: the branch outputs exactly 0, so the adapter starts as the identity
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, H: torch.Tensor) -> torch.Tensor:  # H: (B, T, d)
        return H + self.up(torch.relu(self.down(self.ln(H))))  # (B, T, b) -> (B, T, d)


def apply(model: nn.Module, config: ResidualAdapterConfig) -> nn.Module:
    freeze_base(model)
    d_model = arch_symbols(model.config)["d_model"]
    for _, block in blocks(model):
        attach_after_block(block, "residual_adapter", ResidualAdapterBlock(d_model, config.bottleneck))
    return model
