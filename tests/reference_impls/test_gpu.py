"""A subset of the promises on a CUDA device: the implementations are device-agnostic plain torch."""
from __future__ import annotations

import pytest
import torch

from impl_cases import CASES, batch_for, fresh, prepare
from reference_impls import hooks, qlora
from reference_impls._core import merge, synthetic_batch, train

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

METHODS = ["lora", "ia3", "adalora", "qlora", "prefix-tuning", "prompt-tuning", "sequential-adapter",
           "propetl", "child-tuning"]


@pytest.mark.parametrize("method_id", METHODS)
def test_cuda_outputs_match_cpu_and_training_lowers_the_loss(method_id):
    _, model, config = prepare(method_id, "tiny-llama")
    batch = batch_for(model)
    with torch.no_grad():
        cpu = model.eval()(**batch).logits
        model.to("cuda")
        gpu = model(**{k: v.cuda() for k, v in batch.items()}).logits
    # TF32 is off by default for float32 matmuls; cuBLAS vs CPU summation order differs by a few ulps
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)
    torch.manual_seed(0)
    losses = train(model, synthetic_batch(model, device="cuda"), steps=30, lr=CASES[method_id].lr,
                   **hooks(method_id, model, config))
    assert losses[-1] < 0.9 * losses[0]
    assert all(p.device.type == "cuda" for p in model.parameters())


@pytest.mark.parametrize("method_id", ["lora", "ia3", "adalora"])
def test_cuda_merge_equals_unmerged(method_id):
    _, model, _ = prepare(method_id, "tiny-llama")
    model.to("cuda")
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
        batch = synthetic_batch(model, device="cuda")
        unmerged = model(**batch).logits
        merged = merge(model)(**batch).logits
    torch.testing.assert_close(merged, unmerged, atol=1e-4, rtol=1e-4)


def test_cuda_nf4_quantization_is_bitwise_the_cpu_one():
    layer = fresh("tiny-llama").model.layers[0].mlp.up_proj
    cpu = qlora.NF4Linear(layer)
    gpu = qlora.NF4Linear(layer.cuda())
    assert torch.equal(gpu.codes.cpu(), cpu.codes)
    torch.testing.assert_close(gpu.dequantize().cpu(), cpu.dequantize(), atol=1e-7, rtol=0)
