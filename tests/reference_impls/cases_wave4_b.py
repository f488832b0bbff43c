"""Cases for wave 4 (b): LLaMA-Adapter (adaption-prompt), CPT, Poly, Cartridges, X-LoRA, LoRAMoE."""
from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from impl_cases import Case, make_config

LLAMA = ("tiny-llama",)
DECODERS = ("tiny-llama", "tiny-gpt2")

CPT_CONTEXT = (5, 6, 7, 8, 9, 10, 11, 12)  # two examples: input template, input, output template, label each


class ReadsContext(nn.Module):
    """The base model reading the raw context in front of every input: CPT at init (in-context learning), and
    with `outputs_for_context=False` (logits of the input positions only) a cartridge at init."""

    def __init__(self, model: nn.Module, token_ids: tuple[int, ...], outputs_for_context: bool = True) -> None:
        super().__init__()
        self.model, self.token_ids, self.outputs_for_context = model, torch.tensor(token_ids), outputs_for_context

    def forward(self, input_ids, attention_mask=None, labels=None):
        B, n = input_ids.shape[0], len(self.token_ids)
        mask = None if attention_mask is None else torch.cat([attention_mask.new_ones(B, n), attention_mask], 1)
        out = self.model(input_ids=torch.cat([self.token_ids.expand(B, -1), input_ids], 1), attention_mask=mask)
        return out if self.outputs_for_context else SimpleNamespace(logits=out.logits[:, n:])


CASES = {
    # 4 prompt vectors in the top layer of the two; the gate starts at 0, so the model starts unchanged.
    # lr 3e-2: the gate opens from 0 one step at a time, and at 1e-2 the loss falls by less than 10% in 30 steps
    "adaption-prompt": Case(make_config("adaption-prompt", adapter_len=4, adapter_layers=1), archs=LLAMA,
                            starts_equal=True, lr=3e-2),
    # a context of two complete examples; radii 4 · √(32/2048) = 0.5, about half an embedding row of the tiny
    # models (the paper's 0.1 keeps the context so close to the text that 30 steps move the loss by < 1%)
    "cpt": Case(make_config("cpt", n_virtual_tokens=8, token_ids=CPT_CONTEXT, type_mask=(1, 2, 3, 4, 5, 6, 7, 8),
                            epsilon=4.0, format_epsilon=4.0), archs=DECODERS, starts_equal=True,
                init_reference=lambda base, config: ReadsContext(base, config.token_ids), lr=3e-2),
    # one task (the default: no task ids needed), 3 rank-4 skills in 2 MHR blocks; B = 0, so the update starts at
    # 0; a single task's mixture is one low-rank update, which merges
    "poly": Case(make_config("poly", r=4, n_tasks=1, n_skills=3, n_splits=2), starts_equal=True, mergeable=True),
    # p = 4 virtual tokens, the first a frozen sink; initialised from the cache of tokens 0..3, so at init the
    # model answers as the base model reading those tokens before the input. lr 3e-2: three trainable tokens
    # move tiny Llama's loss by 8% in 30 steps at 1e-2, by 19% at 3e-2
    "cartridge": Case(make_config("cartridge", n_virtual_tokens=4, n_frozen_tokens=1), archs=DECODERS,
                      starts_equal=True, lr=3e-2, init_reference=lambda base, config: ReadsContext(
                          base, tuple(range(config.n_virtual_tokens)), outputs_for_context=False)),
    # eight seeded stand-in experts of rank 4 (scale alpha / r = 8) and a one-layer scaling head (test_xlora.py
    # checks deeper heads against peft); the experts are not zero, so the model does not start as the base
    # model; no T5 (its encoder and decoder lengths differ). lr 3e-2, alpha 32: the head only re-weights fixed
    # experts, and with 3 experts at scale 2 tiny BERT's loss falls by 4% in 30 steps; with these, by 16%
    "xlora": Case(make_config("xlora", n_adapters=8, r=4, alpha=32), archs=("tiny-bert", "tiny-llama", "tiny-gpt2"),
                  lr=3e-2),
    # 4 rank-4 experts on the feed-forward projections (BERT and GPT-2 have no gate); B = 0, so the model starts
    # unchanged; the router's weights depend on the token, so it does not merge
    "loramoe": Case(make_config("loramoe", n_experts=4, r=4, alpha=8), starts_equal=True),
}
