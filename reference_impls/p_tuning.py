"""P-tuning: continuous prompt vectors produced by a trainable prompt encoder (an MLP or a bidirectional LSTM).

Equation:   h_i = f(e_i),  i = 1..n_virtual_tokens,   X' = [h_1 .. h_P; E(x)],
            e_i ∈ R^{d_model} trainable input embeddings of the virtual tokens;
            f = MLP:  Linear(d_model, h) → ReLU → Linear(h, h) → ReLU → Linear(h, d_model)
            f = LSTM: 2-layer bidirectional LSTM(d_model → h) → Linear(2h, 2h) → ReLU → Linear(2h, d_model)
            (h = encoder_hidden_size, d_model when unset). The model and E stay frozen.
Trainable:  n_virtual_tokens * d_model + 3 * d_model * d_model + 3 * d_model     (catalog: trainable_params.total,
            the default MLP encoder with h = d_model). For any h the MLP gives
            n_virtual_tokens*d_model + 2*d_model*h + h*h + 2*h + d_model; the 2-layer LSTM gives
            n_virtual_tokens*d_model + 10*d_model*h + 36*h*h + 34*h + d_model.
            After training `drop_encoder` keeps only the n_virtual_tokens * d_model prompt vectors.
Paper:      "GPT Understands, Too", Xiao Liu et al., 2021 (AI Open 2023), arXiv 2103.10385.

Deviation from the paper: the paper interleaves the continuous prompt with the tokens of a discrete template
("[P_0..P_i] x [P_i+1..P_j] [MASK]") and also keeps a few task-related anchor tokens; this reference prepends
all virtual tokens to the input, as peft's P_TUNING does (there is no template in a generic forward pass).
The encoder follows peft's PromptEncoder layer for layer (the paper uses the LSTM; peft defaults to the MLP),
so that peft can serve as the oracle. Initialisation: e_i ~ N(0, 1) (nn.Embedding's init, as in peft) and
PyTorch's default Linear/LSTM init for f. Not mergeable: the prompt is input, not weight.

Checked against: peft 0.21.2 (installed) tuners/p_tuning/model.py PromptEncoder (MLP: Linear, ReLU,
Linear, ReLU, Linear; LSTM: bidirectional nn.LSTM then Linear(2h, 2h), ReLU, Linear(2h, d_model)); the
oracle test compares counts and outputs for both encoders. The paper's abstract was read, and its
prompt-encoder description (a bidirectional LSTM over the virtual-token embeddings followed by a ReLU MLP)
as recorded in the catalog; the paper's section text was not re-read in this pass. The authors' code
(github.com/THUDM/P-tuning @f4225d4d) differs in widths: LAMA/p_tuning/prompt_encoder.py uses a 2-layer
bidirectional LSTM of hidden size d/2 then Linear(d, d), ReLU, Linear(d, d); PT-Fewshot/pet/wrapper.py an
LSTM of hidden size d then Linear(2d, d), ReLU, Linear(d, d), or a two-layer ReLU MLP (d → d → d); this
file keeps peft's three-layer MLP and Linear(2h, 2h) head so that peft stays the oracle.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._core import freeze_base
from reference_impls._prompts import PromptedModel


@dataclass
class PTuningConfig:
    n_virtual_tokens: int = 20                    # number of continuous prompt tokens
    encoder_reparameterization_type: str = "MLP"  # prompt encoder f: MLP or LSTM (peft's default: MLP)
    encoder_hidden_size: int | None = None        # hidden size h of f; None means d_model (peft's default)
    encoder_num_layers: int = 2                   # LSTM layers (the MLP always has three linear layers)


class PromptEncoder(nn.Module):
    """e_1..e_P and the network f that turns them into the prompt vectors h_1..h_P."""

    def __init__(self, d_model: int, config: PTuningConfig) -> None:
        super().__init__()
        P, h = config.n_virtual_tokens, config.encoder_hidden_size or d_model
        self.embedding = nn.Parameter(torch.randn(P, d_model))  # (P, d_model), nn.Embedding's N(0, 1) init
        self.kind = config.encoder_reparameterization_type.upper()
        if self.kind == "MLP":
            self.mlp_head = nn.Sequential(nn.Linear(d_model, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(),
                                          nn.Linear(h, d_model))
        elif self.kind == "LSTM":
            self.lstm_head = nn.LSTM(d_model, h, num_layers=config.encoder_num_layers, bidirectional=True,
                                     batch_first=True)
            self.mlp_head = nn.Sequential(nn.Linear(2 * h, 2 * h), nn.ReLU(), nn.Linear(2 * h, d_model))
        else:
            raise ValueError(f"unknown encoder_reparameterization_type '{config.encoder_reparameterization_type}'; "
                             "use MLP or LSTM")

    def forward(self) -> torch.Tensor:  # (P, d_model)
        e = self.embedding[None]  # (1, P, d_model)
        if self.kind == "LSTM":
            e = self.lstm_head(e)[0]  # (1, P, 2h): the LSTM reads the virtual tokens as one sequence
        return self.mlp_head(e)[0]  # (P, d_model)


class PTuningModel(PromptedModel):
    def __init__(self, model: nn.Module, config: PTuningConfig) -> None:
        super().__init__(model)
        self.prompt_encoder = PromptEncoder(model.get_input_embeddings().weight.shape[1], config)
        self.register_parameter("prompt_vectors", None)  # set by drop_encoder()

    def prompt(self, input_ids: torch.Tensor, x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        h = self.prompt_vectors if self.prompt_encoder is None else self.prompt_encoder()  # (P, d_model)
        return h.expand(x.shape[0], -1, -1)  # (B, P, d_model): the same prompt for every input


@torch.no_grad()
def drop_encoder(model: PTuningModel) -> PTuningModel:
    """After training: keep h_1..h_P as a plain parameter and delete the encoder (outputs unchanged)."""
    if model.prompt_encoder is not None:
        model.prompt_vectors = nn.Parameter(model.prompt_encoder().detach().clone())  # (P, d_model)
        model.prompt_encoder = None
    return model


def apply(model: nn.Module, config: PTuningConfig) -> nn.Module:
    freeze_base(model)
    return PTuningModel(model, config)
