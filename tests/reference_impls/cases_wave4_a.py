"""Cases for wave 4, helper a: LoKr, DeLoRA, EVA, AdaMSS."""
from __future__ import annotations

from impl_cases import Case, make_config

NO_GPT2 = ("tiny-bert", "tiny-t5", "tiny-llama")  # nn.Linear only: GPT-2's fused Conv1D is not wrapped

CASES = {
    # 32 = 4 x 8 and 16 = 4 x 4; r = 1 stores W_2 (8 x 8, 4 x 8) as rank-1 products and, with decompose_both,
    # W_1 (4 x 4) too, so both branches of the catalog's size rule are counted; B1 = 0 makes ΔW = 0 at init.
    # lr 5e-2: with 20 to 24 parameters per module, 1e-2 moves tiny-bert's loss by 6 % in 30 steps, 5e-2 by 19 %
    "lokr": Case(make_config("lokr", r=1, alpha=2, decompose_both=True), archs=NO_GPT2, starts_equal=True,
                 mergeable=True, lr=5e-2),
    # r = 4, λ = 15 (peft's default); B = 0 makes ΔW = 0 at init. lr 1e-2 is LoRA's; peft's docs suggest
    # 10-100x LoRA's learning rate for DeLoRA
    "delora": Case(make_config("delora", r=4), archs=NO_GPT2, starts_equal=True, mergeable=True),
    # rho = 1: no redistribution, so every layer keeps r = 4 and the count is the catalog's exact case (test_eva.py
    # compares redistributed ranks with peft); A from the PCA of the synthetic batch's inputs, B = 0
    "eva": Case(make_config("eva", r=4, alpha=8, rho=1.0), starts_equal=True, mergeable=True),
    # R = 8 < 32 (at the default 100, R = d_out and the rows of U are orthonormal: clustering by rounding);
    # 4 clusters of rank 1: 4 R + d_out per module; B = 0 at init. lr 5e-2: 30 steps move tiny-bert's loss by
    # 30 %, tiny-t5's and tiny-llama's by more than 40 %
    "adamss": Case(make_config("adamss", r=8, num_subspaces=4), archs=NO_GPT2, starts_equal=True, mergeable=True,
                   lr=5e-2),
}
