"""AdapterSoup-specific promises: text-based selection finds the adapters of the domains that resemble the
new one, the soup is the plain weight average (nothing trained), and the chosen soup does better on the
new domain than the base model and than averaging every adapter."""
from __future__ import annotations

import copy

import pytest
import torch

from impl_cases import fresh
from reference_impls import adaptersoup as soup
from reference_impls._composition import adapter_states, domain_batch, task_loss

D = 3  # training domains, each with its own third of the vocabulary


def texts(model, seed: int = 0):
    # embed_layer=0: a random tiny model's upper layers barely encode which tokens a text uses, its
    # token embeddings do (a real backbone's last layer would be used)
    return [domain_batch(model, d, D, seed=seed + d, batch_size=8, seq_len=24) for d in range(D)]


@pytest.mark.parametrize("selection", ["clustering", "similarity"])
def test_selection_ranks_the_new_domains_own_adapter_first(selection):
    base = fresh("tiny-gpt2")
    for new_domain in range(D):
        new = domain_batch(base, new_domain, D, seed=50, batch_size=8, seq_len=24)
        config = soup.AdapterSoupConfig(bottleneck=8, selection=selection, n_selected=2, embed_layer=0)
        chosen = soup.select(base, texts(base), new, config)
        assert len(chosen) == 2 and chosen[0] == new_domain, (selection, new_domain, chosen)


def test_kmeans_recovers_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0., 0.], [10., 0.], [0., 10.]])
    x = torch.cat([c + 0.5 * torch.randn(20, 2, generator=g) for c in centres])
    found = soup.kmeans(x, 3, seed=1)
    assert torch.cdist(found, centres).min(dim=0).values.max() < 0.5


@pytest.mark.slow
def test_soup_is_the_weight_average_and_the_chosen_soup_beats_the_base_and_the_soup_of_all():
    base = fresh("tiny-gpt2")
    config = soup.AdapterSoupConfig(bottleneck=8, n_selected=2, embed_layer=0)
    batches = texts(base)
    adapters = soup.train_domain_adapters(base, batches, config, steps=30)
    new = domain_batch(base, 1, D, seed=50, batch_size=8, seq_len=24)
    chosen = soup.select(base, batches, new, config)

    model = soup.load_soup(soup.apply(copy.deepcopy(base), config), soup.soup(adapters, chosen))
    for i, state in enumerate(adapter_states(model)):  # θ_soup = mean of the chosen θ_d, module by module
        for k, v in state.items():
            torch.testing.assert_close(v, sum(adapters[d][i][k] for d in chosen) / len(chosen))
    everything = soup.load_soup(soup.apply(copy.deepcopy(base), config), soup.soup(adapters, list(range(D))))
    chosen_loss, all_loss, base_loss = task_loss(model, new), task_loss(everything, new), task_loss(base, new)
    assert chosen_loss < all_loss < base_loss, (chosen_loss, all_loss, base_loss)


def test_soup_and_scores_recomputed_by_hand(monkeypatch):
    """θ_soup = (1/l) Σ θ_d; similarity = cos(mean e_d, mean e_new); clustering = Σ_c p_new(c) p_d(c)."""
    g = torch.Generator().manual_seed(0)
    adapters = [[{"w": torch.randn(3, 2, generator=g)} for _ in range(2)] for _ in range(4)]  # 4 domains, 2 modules
    out = soup.soup(adapters, [3, 1])
    for i in range(2):
        torch.testing.assert_close(out[i]["w"], (adapters[3][i]["w"] + adapters[1][i]["w"]) / 2)

    E = [torch.randn(6, 5, generator=g) + 3 * torch.eye(5)[d] for d in range(3)] + [torch.randn(4, 5, generator=g)]
    monkeypatch.setattr(soup, "embed", lambda model, batch, layer=-1: E[batch["id"]])
    domains, new = [{"id": d} for d in range(3)], {"id": 3}
    sim = soup.domain_scores(None, domains, new, soup.AdapterSoupConfig(selection="similarity"))
    expected = torch.stack([torch.nn.functional.cosine_similarity(E[d].mean(0), E[3].mean(0), dim=0) for d in range(3)])
    torch.testing.assert_close(sim, expected)

    config = soup.AdapterSoupConfig(selection="clustering", n_clusters=2, seed=4)
    mu = torch.cat(E[:3]).mean(0)
    unit = [torch.nn.functional.normalize(e - mu, dim=1) for e in E]
    centres = soup.kmeans(torch.cat(unit[:3]), 2, seed=4)

    def share(e):  # p(c): fraction of the rows nearest centre c
        nearest = ((e[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        return torch.tensor([(nearest == c).float().mean().item() for c in range(2)])

    expected = torch.stack([(share(unit[d]) * share(unit[3])).sum() for d in range(3)])
    torch.testing.assert_close(soup.domain_scores(None, domains, new, config), expected)
