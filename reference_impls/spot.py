"""SPoT (Soft Prompt Transfer): prompt tuning whose prompt starts from one learned on source tasks.

Equation:   X' = [P; E(x)] as in prompt tuning, with P initialised to P_s, a prompt trained on source task(s)
            (P_s = argmin_P L_source(P)), then P = argmin L_target(P) starting there.
Trainable:  n_virtual_tokens * d_model       (catalog: trainable_params.total; the target prompt)
Paper:      "SPoT: Better Frozen Model Adaptation through Soft Prompt Transfer", Tu Vu et al., 2021
            (ACL 2022), arXiv 2110.07904.

The procedure, at small scale:
  1. `train_source_prompt`: prompt tuning on one source task, or on a mixture of source tasks (the paper's
     multi-task SPoT: every step sums the losses of one batch per source task);
  2. `apply` with `config.source_prompt` (a safetensors file holding "prompt", written by `save_prompt`), or
     `transfer(model, P_s)`: the target prompt starts as a copy of P_s and is trained on the target task;
  3. targeted transfer: the learned prompts are task embeddings; `task_similarity` is the paper's cosine
     similarity of average tokens (or its per-token average cosine similarity) and `rank_sources` orders
     source tasks by the similarity of their prompts to a prompt briefly tuned on the target task.
Without a source prompt, P starts from sampled vocabulary embeddings, as in prompt tuning. Not mergeable:
the prompt is input, not weight.
Checked against: the paper's abstract (arXiv 2110.07904: a prompt learned on one or more source tasks
initialises the target prompt; task prompts as task embeddings for retrieving transferable sources); the
two similarity measures (cosine of average tokens, average per-token cosine) are named as in the paper's
§4 as recalled, not re-read in this pass. The authors' code, github.com/google-research/prompt-tuning
@72285eea prompt_tuning/spot/README.md and configs/prompts/from_file.gin, confirms the transfer step (a
trained prompt file read as the initial value of the target prompt); it has no retrieval code to compare
with. The tests pin
the exact copy of the source prompt and both similarities on constructed prompts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import freeze_base
from reference_impls._prompts import PromptedModel, vocab_init


@dataclass
class SpotConfig:
    n_virtual_tokens: int = 100     # prompt length (the same for source and target prompts)
    source_prompt: str | None = None  # safetensors file with the source prompt ("prompt"); None: vocab init


class SpotModel(PromptedModel):
    def __init__(self, model: nn.Module, config: SpotConfig) -> None:
        super().__init__(model)
        self.prompt_embeddings = nn.Parameter(vocab_init(model, config.n_virtual_tokens))  # (P, d_model)
        if config.source_prompt is not None:
            transfer(self, load_prompt(config.source_prompt))

    def prompt(self, input_ids: torch.Tensor, x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        return self.prompt_embeddings.expand(x.shape[0], -1, -1)  # (B, P, d_model)


def apply(model: nn.Module, config: SpotConfig) -> nn.Module:
    freeze_base(model)
    return SpotModel(model, config)


# -- the procedure ---------------------------------------------------------------------------------
@torch.no_grad()
def transfer(model: SpotModel, source_prompt: torch.Tensor) -> SpotModel:
    """Initialise the target prompt with a source prompt (the transfer itself)."""
    if source_prompt.shape != model.prompt_embeddings.shape:
        raise ValueError(f"source prompt {tuple(source_prompt.shape)} does not fit "
                         f"{tuple(model.prompt_embeddings.shape)}")
    model.prompt_embeddings.copy_(source_prompt)
    return model


def train_source_prompt(model: SpotModel, batches: list[dict[str, torch.Tensor]], steps: int,
                        lr: float = 0.3) -> torch.Tensor:
    """Prompt tuning on one or several source tasks (summed losses: the multi-task mixture); returns P_s."""
    opt = torch.optim.Adam([model.prompt_embeddings], lr=lr)
    model.train()
    for _ in range(steps):
        loss = sum(model(**batch).loss for batch in batches)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    return model.prompt_embeddings.detach().clone()


def save_prompt(prompt: torch.Tensor, path: str | Path) -> None:
    from safetensors.torch import save_file

    save_file({"prompt": prompt.detach().contiguous().cpu()}, str(path))


def load_prompt(path: str | Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(path))["prompt"]


def task_similarity(a: torch.Tensor, b: torch.Tensor, kind: str = "average_tokens") -> float:
    """Similarity of two prompts as task embeddings (paper §4): "average_tokens" is the cosine of the
    mean prompt tokens, "per_token" the average cosine over all token pairs."""
    if kind == "average_tokens":
        return F.cosine_similarity(a.mean(0), b.mean(0), dim=0).item()
    if kind == "per_token":
        return (F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T).mean().item()  # (P_a, P_b) -> mean
    raise ValueError(f"unknown similarity '{kind}'; use average_tokens or per_token")


def rank_sources(target_prompt: torch.Tensor, source_prompts: dict[str, torch.Tensor],
                 kind: str = "average_tokens") -> list[str]:
    """Source task names, most similar first (the paper's targeted transfer picks the first)."""
    return sorted(source_prompts, key=lambda name: -task_similarity(target_prompt, source_prompts[name], kind))
