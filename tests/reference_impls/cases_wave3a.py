"""Cases for wave 3's first half (catalog ids a..lo that peft implements): DoRA, LoHa, HRA, FourierFT,
LN Tuning, BOFT, C3A, HiRA, GraLoRA, Lily, GLoRA, LoRA+, LoRA-GA, CorDA, BEFT, DeFT."""
from __future__ import annotations

from impl_cases import Case, make_config

LLAMA = ("tiny-llama",)
NO_BIAS = ("tiny-t5", "tiny-llama")  # linear layers without a bias

CASES = {
    # r = 4 on the 32-wide models; m starts at ||W0||_c and B at 0, so the model starts unchanged
    "dora": Case(make_config("dora", r=4, alpha=8), starts_equal=True, mergeable=True),
    # A2 = 0 at init, so ΔW = (B1 A1) ⊙ (B2 A2) = 0
    "loha": Case(make_config("loha", r=4, alpha=8), starts_equal=True, mergeable=True),
    # r = 4 (even): the reflection vectors come in identical pairs, so H = I at init
    "hra": Case(make_config("hra", r=4), starts_equal=True, mergeable=True),
    # 64 of the 512 to 1024 spectral entries; init_zero makes the start the base model (peft's default draws
    # the coefficients from N(0, 1), test_fourierft.py); lr 0.1: each coefficient reaches ΔW through the
    # 1 / (d_out d_in) of the inverse DFT, and at 1e-2 the loss falls by less than 10% on BERT in 30 steps
    "fourierft": Case(make_config("fourierft", n_frequency=64, init_zero=True), starts_equal=True, mergeable=True,
                      lr=0.1),
    # trainable copies of LLaMA's RMSNorms; the catalog's count (gains only) is LLaMA's (test_ln_tuning.py
    # checks the refusal elsewhere); merge swaps the tuned copy in
    "ln-tuning": Case(make_config("ln-tuning"), archs=LLAMA, starts_equal=True, mergeable=True),
    # two butterfly factors of 4 x 4 blocks (8 and 16 blocks on the 32- and 64-wide inputs); R = 0, s = 1
    "boft": Case(make_config("boft", block_size=4, n_butterfly_factor=2), starts_equal=True, mergeable=True),
    # 8-long kernels tile every tiny-model width; zero kernels start at the base model (peft's default draws
    # them Xavier-uniform, test_c3a.py); lr 0.1, the learning rate peft's docs suggest for C3A
    "c3a": Case(make_config("c3a", block_size=8, init="zeros"), starts_equal=True, mergeable=True, lr=0.1),
    # B = 0 at init, so ΔW = W0 ⊙ (B A) = 0; lr 3e-2: the update is damped by the entries of W0 (~0.2 in the
    # tiny models), and at 1e-2 BERT's loss falls by 9.9% in 30 steps
    "hira": Case(make_config("hira", r=4), starts_equal=True, mergeable=True, lr=3e-2),
    # r = 4 in 2 x 2 blocks of rank 2, plus a rank-2 hybrid LoRA; B = 0 at init
    "gralora": Case(make_config("gralora", r=4, k=2, hybrid_r=2, alpha=8), starts_equal=True, mergeable=True),
    # r = 4, 3 experts, A shared by both layers of a stack; zero experts start at the base model; the
    # batch-averaged routing makes the update input-dependent, so it does not merge
    "lily": Case(make_config("lily", r=4, stride_a=2, num_b=3), starts_equal=True),
    # the catalog counts bias-free layers (A and B only); on BERT and GPT-2 the bias paths C, D, E add
    # r (d_in + 1) + 2 per module (test_glora.py checks that count and peft on BERT)
    "glora": Case(make_config("glora", r=4), archs=NO_BIAS, starts_equal=True, mergeable=True),
    # LoRA's layer; training_hooks make _core.train's Adam step B with lr_ratio = 16 times the learning rate,
    # so lr 1e-3 trains B at 1.6e-2
    "lora-plus": Case(make_config("lora-plus", r=4, alpha=8), starts_equal=True, mergeable=True, lr=1e-3),
    # A, B from the SVD of the gradient on the synthetic batch; W0 is offset by s B A, so the start is the base model
    "lora-ga": Case(make_config("lora-ga", r=4, alpha=8), starts_equal=True, mergeable=True),
    # A, B from the covariance-oriented SVD on the synthetic batch; the residual W0 − s B A makes the start the
    # base model
    "corda": Case(make_config("corda", r=4, alpha=8), starts_equal=True, mergeable=True),
    # a zero value-bias shift; it folds into the bias on BERT and GPT-2 and stays a vector on LLaMA and T5;
    # lr 0.1: one d_out vector per layer learns slowly (at 3e-2 BERT's loss falls by less than 10% in 30 steps)
    "beft": Case(make_config("beft"), starts_equal=True, mergeable=True, lr=0.1),
    # r = 4; R = Nᵀ W0 / s at init puts back what the projection removes, so the start is the base model
    "deft": Case(make_config("deft", r=4), starts_equal=True, mergeable=True),
}
