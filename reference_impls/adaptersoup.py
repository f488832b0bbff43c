"""AdapterSoup: average the weights of the domain adapters whose training text resembles a new domain.

Procedure (paper Sec. 2-3):
  1. one adapter per training domain d = 1..D, each trained by language modelling on that domain's text
     (`train_domain_adapters`; all from the same initialisation, which weight averaging presupposes);
  2. at test time, for a new domain with a little unlabelled text, choose l of the D adapters:
       similarity:  cos( mean_x e(x_new), mean_x e(x_d) ), the l highest;
       clustering:  k-means over the embeddings of all training sequences; with p_d(c) the share of
                    domain d's sequences in cluster c and p_new(c) the share of the new text's,
                    score_d = Σ_c p_new(c) p_d(c), the l highest (the paper's best selection);
  3. the soup  θ_soup = (1/l) Σ_{d ∈ chosen} θ_d  goes into the model. Nothing is trained at test time.
Adapter:    h ← h + W_up f(W_down h + b_down) + b_up after each targeted module (sequential_adapter.py).
Trainable:  2 * d_out * bottleneck + bottleneck + d_out per targeted module and domain adapter (catalog:
            per_target, one adapter; training D domains costs D times this; the soup trains nothing).
Paper:      "AdapterSoup: Weight Averaging to Improve Generalization of Pretrained Language Models",
            Alexandra Chronopoulou et al., 2023 (Findings of EACL 2023), arXiv 2302.07027.

Deviations: the paper embeds text with a separate sentence encoder (Sentence-BERT for similarity, and a
pretrained LM's embeddings for clustering, with a Gaussian mixture); here e(x) is the frozen backbone's
mean-pooled hidden state of layer `embed_layer` (the last by default), centred and normalised for the
clustering, which is k-means (seeded k-means++ init) instead of a Gaussian mixture. The paper's adapter
architecture and soup size l were not checked; defaults here are a bottleneck adapter after the FFN, l = 3.
Initialisation: W_up = b_up = 0 (each domain adapter starts as the identity, the model as the base model).

Checked against: the paper's abstract (domain adapters trained by language modelling, weight-space
averaging of a chosen subset at test time without training, selection by text clustering or semantic
similarity, clustering best); the full text was not re-read in this pass, so the adapter architecture,
l and the embedding models stay as stated above (unverified). No authors' code was consulted to compare
with; peft has no AdapterSoup (its add_weighted_adapter is a related weight average for LoRA). Numeric
pins: test_adaptersoup.py re-computes the soup, the similarity score and the clustering score by hand.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reference_impls import sequential_adapter as sa
from reference_impls._composition import load_adapter_states, train_task_adapter

State = dict[str, torch.Tensor]


@dataclass
class AdapterSoupConfig:
    bottleneck: int = 64                         # m, hidden size of every domain adapter
    activation: str = "relu"                     # f between the projections
    target_modules: tuple[str, ...] = ("down",)  # an adapter follows each (FFN output)
    selection: str = "clustering"                # clustering | similarity: how the soup's adapters are chosen
    n_selected: int = 3                          # l, adapters averaged into the soup
    n_clusters: int = 0                          # k of k-means; 0 = one per training domain
    embed_layer: int = -1                        # hidden state mean-pooled into e(x): -1 last, 0 token embeddings
    seed: int = 0                                # k-means++ initialisation seed


def train_domain_adapters(model: nn.Module, batches: list[dict[str, torch.Tensor]], config: AdapterSoupConfig,
                          steps: int = 40, lr: float = 1e-2) -> list[list[State]]:
    """Stage 1: one adapter per domain, all starting from the same initialisation (seed 0)."""
    return [train_task_adapter(model, batch, config.bottleneck, config.target_modules, config.activation,
                               steps, lr, seed=0) for batch in batches]


@torch.no_grad()
def embed(model: nn.Module, batch: dict[str, torch.Tensor], layer: int = -1) -> torch.Tensor:
    """e(x): the frozen backbone's hidden state `layer` (-1: the last), mean-pooled over attended tokens: (B, d)."""
    model.eval()
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    if model.config.is_encoder_decoder:
        h = model.get_encoder()(**inputs, output_hidden_states=True).hidden_states[layer]  # (B, T, d)
    else:
        h = model(**inputs, output_hidden_states=True).hidden_states[layer]                # (B, T, d)
    mask = inputs.get("attention_mask", torch.ones(h.shape[:2]))[..., None].to(h.dtype)  # (B, T, 1)
    return (h * mask).sum(dim=1) / mask.sum(dim=1)


def kmeans(x: torch.Tensor, k: int, seed: int = 0, iters: int = 50) -> torch.Tensor:
    """Cluster centres (k, d) of the rows of x (n, d): k-means++ initialisation, then Lloyd's iterations."""
    g = torch.Generator().manual_seed(seed)
    centres = x[torch.randint(len(x), (1,), generator=g)]  # (1, d)
    while len(centres) < k:  # k-means++: next centre drawn with probability ∝ squared distance
        d2 = torch.cdist(x, centres).min(dim=1).values ** 2  # (n,)
        centres = torch.cat([centres, x[torch.multinomial(d2 / d2.sum(), 1, generator=g)]])
    for _ in range(iters):
        assign = torch.cdist(x, centres).argmin(dim=1)  # (n,)
        new = torch.stack([x[assign == c].mean(dim=0) if (assign == c).any() else centres[c] for c in range(k)])
        if torch.equal(new, centres):
            break
        centres = new
    return centres


def domain_scores(model: nn.Module, domain_batches: list[dict[str, torch.Tensor]],
                  new_batch: dict[str, torch.Tensor], config: AdapterSoupConfig) -> torch.Tensor:
    """score_d of every training domain for the new domain's text, (D,); higher = more alike."""
    domain_emb = [embed(model, b, config.embed_layer) for b in domain_batches]  # D x (n_d, d)
    new_emb = embed(model, new_batch, config.embed_layer)                       # (n, d)
    if config.selection == "similarity":
        means = torch.stack([e.mean(dim=0) for e in domain_emb])  # (D, d)
        return torch.cosine_similarity(means, new_emb.mean(dim=0, keepdim=True), dim=1)
    if config.selection == "clustering":
        k = config.n_clusters or len(domain_batches)
        mu = torch.cat(domain_emb).mean(dim=0)  # (d,): the direction all texts share carries no domain
        domain_emb = [nn.functional.normalize(e - mu, dim=1) for e in domain_emb]  # (n_d, d), unit length
        new_emb = nn.functional.normalize(new_emb - mu, dim=1)                    # (n, d)
        centres = kmeans(torch.cat(domain_emb), k, config.seed)  # (k, d)

        def shares(e: torch.Tensor) -> torch.Tensor:  # fraction of the sequences in each cluster, (k,)
            return torch.bincount(torch.cdist(e, centres).argmin(dim=1), minlength=k).float() / len(e)

        p_new = shares(new_emb)
        return torch.stack([shares(e) @ p_new for e in domain_emb])
    raise ValueError(f"unknown selection '{config.selection}'; use clustering or similarity")


def select(model: nn.Module, domain_batches: list[dict[str, torch.Tensor]], new_batch: dict[str, torch.Tensor],
           config: AdapterSoupConfig) -> list[int]:
    """The l training domains whose adapters go into the soup, best first (ties: lower index first)."""
    scores = domain_scores(model, domain_batches, new_batch, config)
    order = sorted(range(len(scores)), key=lambda d: (-scores[d].item(), d))
    return order[:config.n_selected]


def soup(adapters: list[list[State]], chosen: list[int]) -> list[State]:
    """θ_soup = mean of the chosen adapters' weights, module by module (adapters[d][i])."""
    return [{k: torch.stack([adapters[d][i][k] for d in chosen]).mean(dim=0) for k in adapters[chosen[0]][i]}
            for i in range(len(adapters[chosen[0]]))]


def load_soup(model: nn.Module, states: list[State]) -> nn.Module:
    """Put the soup into a model prepared by `apply` (no training follows)."""
    return load_adapter_states(model, states)


def apply(model: nn.Module, config: AdapterSoupConfig) -> nn.Module:
    """The adapted model: one adapter per targeted module (trained per domain, or holding the soup)."""
    return sa.apply(model, sa.SequentialAdapterConfig(config.bottleneck, config.activation, config.target_modules))
