"""Late Prompt Tuning (LPT): an instance-dependent prompt, generated from the hidden states below an intermediate
layer, inserted in front of that layer's input.

Equation:   H = h^{(l-1)}(x) ∈ R^{T × d_model}   (the frozen lower layers' output for the input, no prompt),
            P(x) = W_up ReLU(Pool(W_down H + b_down)) + b_up,   Pool: adaptive average (or max) pooling of each
            sequence's real tokens to n_virtual_tokens positions; layer l onwards reads [P(x); H].
            W_down ∈ R^{generator_hidden × d_model}, W_up ∈ R^{d_model × generator_hidden}; the model frozen.
Trainable:  2 * d_model * generator_hidden + generator_hidden + d_model   (catalog: trainable_params.total)
Paper:      "Late Prompt Tuning: A Late Prompt Could Be Better Than Many Prompts", Xiangyang Liu et al., 2022
            (Findings of EMNLP 2022), arXiv 2210.11292.

This is the paper's pooling prompt generator (APPG with average pooling, MPPG with max pooling), in the order of
the authors' code: down-projection per token, pooling over the real tokens, ReLU, up-projection per prompt token.
The naive generator (NPG: the first token's state projected to all P prompt vectors at once) is not implemented.
l = insert_layer (None: the middle, n_layers // 2, as in the paper's RoBERTa-large runs; on T5 the encoder's
layers). The lower layers see no prompt and need no gradient: H is computed without gradients, which is where LPT
saves training time and memory.
How it runs here: a first pass of the frozen model stops at layer l and keeps H; a second pass runs the model on
[placeholders; E(x)] (mask ones, per-token labels -100 there, as in prompt tuning), and a forward pre-hook on
layer l replaces that layer's input by [P(x); H]. Whatever the second pass computed below l is discarded, so the
lower layers run twice: simple, not fast (the authors' code inserts the prompt inside one pass).
Positions: H keeps the positions of the first pass; the prompt sits in front, as prompt tuning's would.
Choices not checked against the paper: the defaults (10 prompt tokens, bottleneck 256) and nn.Linear's init.
Not mergeable: the prompt is attended to, not added to a weight.

Checked against: the paper's generator as summarised above and the order of operations attributed to the
authors' code (an earlier read; the code was not re-fetched at a pinned commit in this pass, nor the paper's
text re-read). peft has no Late Prompt Tuning. Numeric pins: test_late_prompt_tuning.py re-computes layer
l's input [W_up ReLU(Pool(W_down H + b_down)) + b_up; H] from the prompt-less lower states, for average and
max pooling.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import family, freeze_base
from reference_impls._prompts import PromptedModel, prepend


@dataclass
class LatePromptTuningConfig:
    n_virtual_tokens: int = 10          # prompt length
    generator_hidden: int = 256         # bottleneck size of the prompt generator
    insert_layer: int | None = None     # layer l that first sees the prompt; None: n_layers // 2
    pooling: str = "avg"                # avg (the paper's APPG) | max (MPPG)


def layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks that the prompt's layer index counts (T5: the encoder's)."""
    fam = family(model)
    return {"bert": lambda: model.base_model.encoder.layer, "llama": lambda: model.model.layers,
            "gpt2": lambda: model.transformer.h, "t5": lambda: model.encoder.block}[fam]()


class _Stop(Exception):
    """Ends the first pass at layer l."""


class PromptGenerator(nn.Module):
    def __init__(self, d_model: int, config: LatePromptTuningConfig) -> None:
        super().__init__()
        if config.pooling not in ("avg", "max"):
            raise ValueError(f"unknown pooling '{config.pooling}'; use avg or max")
        self.P, self.pooling = config.n_virtual_tokens, config.pooling
        self.down = nn.Linear(d_model, config.generator_hidden)
        self.up = nn.Linear(config.generator_hidden, d_model)

    def pool(self, h: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Adaptive pooling of each sequence's real tokens to P positions. (B, T, m) -> (B, P, m)"""
        pool = F.adaptive_avg_pool1d if self.pooling == "avg" else F.adaptive_max_pool1d
        rows = []
        for b in range(h.shape[0]):
            real = h[b] if attention_mask is None else h[b, attention_mask[b].bool()]  # (T_b, m)
            rows.append(pool(real.T[None], self.P)[0].T)  # (P, m)
        return torch.stack(rows)  # (B, P, m)

    def forward(self, H: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        return self.up(torch.relu(self.pool(self.down(H), attention_mask)))  # (B, P, d_model)


class LatePromptModel(PromptedModel):
    def __init__(self, model: nn.Module, config: LatePromptTuningConfig) -> None:
        super().__init__(model)
        blocks = layers(model)
        self.insert_layer = len(blocks) // 2 if config.insert_layer is None else config.insert_layer
        if not 0 <= self.insert_layer < len(blocks):
            raise ValueError(f"insert_layer {self.insert_layer} outside 0..{len(blocks) - 1}")
        self.generator = PromptGenerator(model.get_input_embeddings().weight.shape[1], config)
        self.n_virtual_tokens = config.n_virtual_tokens
        self._mode: str | None = None      # "capture" in the first pass, "insert" in the second
        self._layer_input: torch.Tensor | None = None
        blocks[self.insert_layer].register_forward_pre_hook(self._at_insert_layer)

    def _at_insert_layer(self, module: nn.Module, args: tuple):
        if self._mode == "capture":
            self._layer_input = args[0]  # H = h^{(l-1)}: (B, T, d_model)
            raise _Stop
        if self._mode == "insert":
            return (self._layer_input, *args[1:])  # [P(x); H]: (B, P+T, d_model)
        return None

    def lower_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """H: the input of layer l for the bare input, computed without gradients. (B, T, d_model)"""
        self._mode = "capture"
        try:
            with torch.no_grad():
                (self.model.get_encoder() if self.encoder_decoder else self.model)(
                    input_ids=input_ids, attention_mask=attention_mask)
        except _Stop:
            pass
        finally:
            self._mode = None
        return self._layer_input

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs):
        H = self.lower_states(input_ids, attention_mask)  # (B, T, d_model)
        prompt = self.generator(H, attention_mask)  # (B, P, d_model)
        x = self.embed(input_ids)  # (B, T, d_model): the second pass's lower layers are discarded
        x, attention_mask, labels = prepend(torch.zeros_like(prompt), x, attention_mask, labels, self.encoder_decoder)
        self._layer_input, self._mode = torch.cat([prompt, H.to(prompt.dtype)], dim=1), "insert"
        try:
            return self.model(inputs_embeds=x, attention_mask=attention_mask, labels=labels, **kwargs)
        finally:
            self._mode, self._layer_input = None, None


def apply(model: nn.Module, config: LatePromptTuningConfig) -> nn.Module:
    freeze_base(model)
    return LatePromptModel(model, config)
