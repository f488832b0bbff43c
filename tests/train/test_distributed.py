"""Two CPU processes under accelerate (gloo): DDP and FSDP2 compute what one process computes.

One process with batch 2 x grad-accum 2 and two processes with batch 2 each see the same four rows per
step, cut into the same micro-batches with the same dropout masks (seeded per micro-batch, not per
process), so their losses and adapters agree to float tolerance. The FSDP2 adapter is gathered from the
shards and must load into a plain single-process model.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from peftkb.train import loop, outdir
from tests.train.conftest import DATA
from tests.train.test_train import held_out_loss, losses, train_json

pytestmark = pytest.mark.slow


def launch(*args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "peftkb", "train", *args, "--format", "json"],
                          capture_output=True, text=True, env=env, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def adapter(out):
    from safetensors.torch import load_file

    return load_file(str(out / outdir.ADAPTER))


def test_ddp_and_fsdp2_on_two_processes_match_one_process(tiny_llama_dir, tmp_path):
    common = ["lora", "-m", str(tiny_llama_dir), "-d", str(DATA / "instructions.jsonl"), "--max-steps", "4",
              "--lr", "1e-2", "--batch-size", "2", "-s", "dropout=0.1", "--eval-every", "4"]
    one = train_json(*common, "--grad-accum", "2", "-o", str(tmp_path / "one"))
    ddp = launch(*common, "--launcher", "accelerate", "--num-processes", "2", "-o", str(tmp_path / "ddp"))
    fsdp = launch(*common, "--launcher", "accelerate", "--num-processes", "2", "--distributed", "fsdp",
                  "-o", str(tmp_path / "fsdp"))

    reference = losses(tmp_path / "one")
    for name, record in (("ddp", ddp), ("fsdp", fsdp)):
        assert record["processes"] == 2
        assert record["trainable_params"] == one["trainable_params"] == 1792  # the whole count, not a shard's
        assert losses(tmp_path / name) == pytest.approx(reference, rel=1e-5)
        saved = adapter(tmp_path / name)
        assert saved.keys() == adapter(tmp_path / "one").keys()
        for key, value in adapter(tmp_path / "one").items():
            torch.testing.assert_close(saved[key], value, atol=1e-5, rtol=1e-4)
    assert json.loads((tmp_path / "fsdp" / outdir.MARKER).read_text())["distributed"] == "fsdp"

    # the FSDP2 adapter loads into a single-process model: same held-out loss as the sharded run measured
    model = loop.load(tmp_path / "fsdp")
    assert held_out_loss(model, tmp_path / "fsdp")["eval_loss"] == pytest.approx(fsdp["eval_loss"], rel=1e-6)
    ids = torch.tensor([[5, 80, 81, 82, 33, 9]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, loop.load(tmp_path / "one")(input_ids=ids).logits,
                                   atol=1e-5, rtol=1e-4)
