"""Cases for wave 3's second half (catalog ids after lora that peft implements): VeRA, ..."""
from __future__ import annotations

from impl_cases import Case, make_config

CASES = {
    # r = 8 on the 32-wide models; b = 0 makes ΔW = 0 at init. lr 5e-2: with r + d_out parameters per
    # module, LoRA's 1e-2 moves tiny-bert's loss by 5 % in 30 steps, 5e-2 by 27 %
    "vera": Case(make_config("vera", r=8), starts_equal=True, mergeable=True, lr=5e-2),
}
