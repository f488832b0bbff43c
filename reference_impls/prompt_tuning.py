"""Prompt tuning: a trainable soft prompt prepended to the input embeddings.

Equation:   X' = [P; E(x)],   P ∈ R^{n_virtual_tokens × d_model} trained, the model and E frozen
Trainable:  n_virtual_tokens * d_model                    (catalog: trainable_params.total)
Paper:      "The Power of Scale for Parameter-Efficient Prompt Tuning", Brian Lester et al., 2021
            (EMNLP 2021), arXiv 2104.08691.

The soft prompt goes in front of the encoder input (T5: the encoder's, not the decoder's). Attention
masks get ones for the prompt positions, and for models whose logits line up with their input (decoders,
BERT) per-token labels get -100 there, so the prompt is never a prediction target — as in peft. Initialisation
"vocab" copies the embeddings of randomly sampled vocabulary tokens, the paper's second-best choice and
the one that needs no labels; "labels" copies the embeddings of given token ids (the paper's class-label
init); "random" draws from U(-0.5, 0.5) as in the paper. Not mergeable: the prompt is input, not weight.

Checked against: peft 0.21.2 (installed) PromptEmbedding and PeftModel's prompt-learning forward (prompt
in front of the input embeddings, mask ones, labels -100 over the prompt); the oracle test compares
counts, outputs and the loss. The authors' code (github.com/google-research/prompt-tuning @72285eea):
prompt_tuning/prompts.py from_sample_of_embeddings draws rows from the first population_size embeddings
(configs/prompts/from_class_labels.gin: population_size = 5000, the vocabulary's first 5000 pieces),
and from_embedded_list embeds the class-label texts and fills the remaining slots with that sampler.
Here any token is sampled (the tiny models carry no frequency order) and the given label ids are cycled
instead of filling with samples.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._core import family, freeze_base
from reference_impls._prompts import check_positions


@dataclass
class PromptTuningConfig:
    n_virtual_tokens: int = 100            # number of soft-prompt vectors (the authors' gin config)
    init: str = "vocab"                    # vocab | labels | random
    init_token_ids: tuple[int, ...] = ()   # for init="labels": tokens whose embeddings start the prompt (cycled)


class PromptTuningModel(nn.Module):
    """Wraps an HF model; forward takes the model's usual arguments."""

    def __init__(self, model: nn.Module, config: PromptTuningConfig) -> None:
        super().__init__()
        self.model = model
        self.config = model.config  # what HF code and our helpers read
        E = model.get_input_embeddings().weight  # (V, d_model)
        P, (V, d) = config.n_virtual_tokens, E.shape
        if config.init == "vocab":
            prompt = E[torch.randint(V, (P,))].clone()
        elif config.init == "labels":
            if not config.init_token_ids:
                raise ValueError("init='labels' needs init_token_ids")
            ids = torch.tensor(config.init_token_ids)
            prompt = E[ids[torch.arange(P) % len(ids)]].clone()
        elif config.init == "random":
            prompt = torch.empty(P, d).uniform_(-0.5, 0.5)
        else:
            raise ValueError(f"unknown init '{config.init}'; use vocab, labels or random")
        self.prompt = nn.Parameter(prompt.detach())  # (P, d_model)
        self.encoder_decoder = family(model) == "t5"  # T5's labels belong to the decoder, which sees no prompt

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs):
        B, P = input_ids.shape[0], self.prompt.shape[0]
        check_positions(self.model.config, P, input_ids.shape[1])
        x = self.model.get_input_embeddings()(input_ids)  # (B, T, d_model)
        x = torch.cat([self.prompt.expand(B, -1, -1).to(x.dtype), x], dim=1)  # (B, P+T, d_model)
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask.new_ones(B, P), attention_mask], dim=1)  # (B, P+T)
        if labels is not None and labels.dim() == 2 and not self.encoder_decoder:  # per-token labels
            labels = torch.cat([labels.new_full((B, P), -100), labels], dim=1)  # (B, P+T)
        return self.model(inputs_embeds=x, attention_mask=attention_mask, labels=labels, **kwargs)


def apply(model: nn.Module, config: PromptTuningConfig) -> nn.Module:
    freeze_base(model)
    return PromptTuningModel(model, config)
