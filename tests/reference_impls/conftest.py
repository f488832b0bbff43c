"""Fixtures for the reference-implementation tests: tiny random-init models, no network, no hub."""
from __future__ import annotations

import pytest
import torch

from impl_cases import batch_for, fresh


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(1)  # two shared cores; tiny models gain nothing from more threads


@pytest.fixture(params=["tiny-bert", "tiny-t5", "tiny-llama", "tiny-gpt2"])
def arch(request) -> str:
    return request.param


@pytest.fixture
def base_model(arch):
    return fresh(arch)


@pytest.fixture
def batch(base_model):
    return batch_for(base_model)
