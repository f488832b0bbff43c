"""Shared plumbing for the soft-prompt methods of wave 2 (P-tuning, WARP, SPoT, ATTEMPT, MPT, IDPG, LPT, DePT).

Every one of them ends the same way as prompt tuning (reference_impls/prompt_tuning.py): a (B, P, d_model)
block of prompt vectors goes in front of the input embeddings, the attention mask gets ones for it, and
per-token labels get -100 there (so the prompt is never a prediction target); on T5 the prompt goes to the
encoder only. They differ only in where the prompt vectors come from, which is what `PromptedModel.prompt`
returns in each method's file.
"""
from __future__ import annotations

import torch
from torch import nn

from reference_impls._core import family


def vocab_init(model: nn.Module, n_tokens: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rows of the input embedding matrix at random token ids (prompt tuning's label-free init). (n, d_model)"""
    E = model.get_input_embeddings().weight  # (V, d_model)
    return E[torch.randint(E.shape[0], (n_tokens,), generator=generator)].detach().clone()


def prepend(prompt: torch.Tensor, x: torch.Tensor, attention_mask: torch.Tensor | None,
            labels: torch.Tensor | None, encoder_decoder: bool):
    """[prompt; x] with the mask and per-token labels extended to match (prompt_tuning.py's convention)."""
    B, P = x.shape[0], prompt.shape[1]
    x = torch.cat([prompt.to(x.dtype), x], dim=1)  # (B, P+T, d_model)
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask.new_ones(B, P), attention_mask], dim=1)  # (B, P+T)
    if labels is not None and labels.dim() == 2 and not encoder_decoder:  # per-token labels
        labels = torch.cat([labels.new_full((B, P), -100), labels], dim=1)  # (B, P+T)
    return x, attention_mask, labels


def check_positions(config, n_prompt: int, n_input: int) -> None:
    """ValueError when prompt + input is longer than the model's learned positions (BERT, GPT-2, LLaMA's
    max_position_embeddings; T5's relative positions have no limit)."""
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if family(config) != "t5" and limit is not None and n_prompt + n_input > limit:
        raise ValueError(f"{n_prompt} prompt tokens + {n_input} input tokens = {n_prompt + n_input} exceed the "
                         f"model's {limit} positions; shorten the prompt or the input")


class PromptedModel(nn.Module):
    """Wraps an HF model; `prompt(input_ids, x, attention_mask)` gives the (B, P, d_model) vectors put in front of x."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = model.config  # what HF code and our helpers read
        self.encoder_decoder = family(model) == "t5"  # T5's labels belong to the decoder, which sees no prompt

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, d_model)
        return self.model.get_input_embeddings()(input_ids)

    def prompt(self, input_ids: torch.Tensor, x: torch.Tensor,
               attention_mask: torch.Tensor | None) -> torch.Tensor:  # (B, P, d_model)
        raise NotImplementedError

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs):
        x = self.embed(input_ids)  # (B, T, d_model)
        prompt = self.prompt(input_ids, x, attention_mask)  # (B, P, d_model)
        check_positions(self.config, prompt.shape[1], x.shape[1])
        x, attention_mask, labels = prepend(prompt, x, attention_mask, labels, self.encoder_decoder)
        return self.model(inputs_embeds=x, attention_mask=attention_mask, labels=labels, **kwargs)


def mean_pool(x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Average over the real (unmasked) positions. (B, T, d) -> (B, d)"""
    if attention_mask is None:
        return x.mean(dim=1)
    m = attention_mask.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)


def max_pool(x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Maximum over the real (unmasked) positions. (B, T, d) -> (B, d)"""
    if attention_mask is not None:
        x = x.masked_fill(attention_mask[..., None] == 0, torch.finfo(x.dtype).min)
    return x.max(dim=1).values
