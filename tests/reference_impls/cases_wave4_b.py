"""Cases for wave 4 (b): LLaMA-Adapter (adaption-prompt), CPT, Poly, Cartridges, X-LoRA, LoRAMoE."""
from __future__ import annotations

from impl_cases import Case, make_config

LLAMA = ("tiny-llama",)

CASES = {
    # 4 prompt vectors in the top layer of the two; the gate starts at 0, so the model starts unchanged.
    # lr 3e-2: the gate opens from 0 one step at a time, and at 1e-2 the loss falls by less than 10% in 30 steps
    "adaption-prompt": Case(make_config("adaption-prompt", adapter_len=4, adapter_layers=1), archs=LLAMA,
                            starts_equal=True, lr=3e-2),
}
