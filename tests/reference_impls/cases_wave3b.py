"""Cases for wave 3's second half (catalog ids after lora that peft implements): VeRA, rsLoRA, PiSSA, OLoRA, OFT, MiSS, RandLoRA, RoAd, SHiRA, VB-LoRA, PVeRA, Trainable Tokens, Uni-LoRA, PEANuT, PSOFT, OSF, TinyLoRA, WaveFT"""
from __future__ import annotations

from impl_cases import Case, make_config

CASES = {
    # r = 8 on the 32-wide models; b = 0 makes ΔW = 0 at init. lr 5e-2: with r + d_out parameters per
    # module, LoRA's 1e-2 moves tiny-bert's loss by 5 % in 30 steps, 5e-2 by 27 %
    "vera": Case(make_config("vera", r=8), starts_equal=True, mergeable=True, lr=5e-2),
    "rslora": Case(make_config("rslora", r=4, alpha=8), starts_equal=True, mergeable=True),
    # PiSSA and OLoRA move part of W into A and B and freeze the rest, so the model starts equal to the base
    # model up to float rounding. niter=None (full SVD): the init is deterministic, so the save/load test's
    # fresh apply rebuilds the same residual W_res that the saved A and B belong to
    "pissa": Case(make_config("pissa", r=4, alpha=4, niter=None), starts_equal=True, mergeable=True),
    "olora": Case(make_config("olora", r=4, alpha=8), starts_equal=True, mergeable=True),
    # block_size 8 divides every d_in of the 32-wide models; Q = 0 gives R = I at init
    "oft": Case(make_config("oft", block_size=8), starts_equal=True, mergeable=True),
    # r = 4 shards on the 32-wide models; D = 0 at init
    "miss": Case(make_config("miss", r=4), starts_equal=True, mergeable=True),
    # r = 4: 8 bases on a 32-wide module; λ = 0 at init. alpha = 8 (scale 2), not peft's 20 r: at scale 20
    # the merge test's perturbed update moves GPT-2's logits so far that float32 rounding reaches 1.3e-4
    "randlora": Case(make_config("randlora", r=4, alpha=8), starts_equal=True, mergeable=True),
    # group_size 8 divides every d_out of the 32-wide models (GPT-2's fused c_attn: 96); θ = 0, α = 1 at init.
    # lr 3e-2: with d_out parameters per module, 1e-2 moves tiny-bert's loss by 8 % in 30 steps, 3e-2 by 15 %
    "road": Case(make_config("road", group_size=8), starts_equal=True, mergeable=True, lr=3e-2),
    # r = 2: 2 (32 + 32) = 128 of the 1024 entries of a 32 x 32 matrix; S = 0 at init
    "shira": Case(make_config("shira", r=2), starts_equal=True, mergeable=True),
    # vector_length 8 divides every width of the 32-wide models; neither factor starts at zero: not starts_equal
    "vblora": Case(make_config("vblora", r=4, num_vectors=16, vector_length=8), mergeable=True),
    # as VeRA; z is sampled in train mode (the loss test), the mean is used in eval mode (the other tests)
    "pvera": Case(make_config("pvera", r=8), starts_equal=True, mergeable=True, lr=5e-2),
    # the last 32 of the 100 ids, 17 of which occur in the synthetic batch (an untied model only trains rows
    # that occur); the rows start as copies: starts_equal
    "trainable-tokens": Case(make_config("trainable-tokens", n_tokens=32), starts_equal=True, mergeable=True),
    # d = 256 (the default) for the whole model; θ_d is not zero at init and both factors read it: not
    # starts_equal. lr 5e-2: one vector for the whole model; measured over 30 steps, d = 64 at 1e-2 moves the
    # loss by 2-3 %, d = 256 at 5e-2 by 22 % (tiny-bert) to 44 % (tiny-llama)
    "unilora": Case(make_config("unilora", r=4), mergeable=True, lr=5e-2),
    # r = 4 with one encoder/decoder pair, so the residual path is exercised; B = 0 at init
    "peanut": Case(make_config("peanut", r=4, depth=1), starts_equal=True, mergeable=True),
    # r = 8 on the 32-wide models; Q = 0, a = b = 1 give R = I at init. lr 5e-2: with r(r - 1)/2 + 2r
    # parameters per module, r = 4 at 1e-2 moves GPT-2's loss by 4 % in 30 steps, r = 8 at 5e-2 by 27 %
    "psoft": Case(make_config("psoft", r=8, alpha=8), starts_equal=True, mergeable=True, lr=5e-2),
    # the default split (half of each matrix trained); the trained factors start at the SVD's: starts_equal
    "osf": Case(make_config("osf"), starts_equal=True, mergeable=True),
    # u = 16 per module (weight_tying 0, the case the catalog formula counts); v = 0 at init. lr 5e-2: 16
    # numbers per module; measured over 30 steps at 5e-2 the loss drops by 16 % (GPT-2) to 28 % (T5)
    "tinylora": Case(make_config("tinylora", r=4, u=16), starts_equal=True, mergeable=True, lr=5e-2),
    # 64 coefficients per module (of 512 to 1024 entries); C = 0 at init
    "waveft": Case(make_config("waveft", n_frequency=64), starts_equal=True, mergeable=True),
}
