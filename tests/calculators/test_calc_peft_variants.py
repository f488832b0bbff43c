"""Counts of method variants the peft MetaMathQA suite ran (benchmarks/calc_vs_peft.py), checked against peft.

DeFT's PaRa mode (para=True: P only, no R) and TinyLoRA's weight tying (groups of modules share one trainable
vector) change the count through a hyperparameter; each case re-computes the count by hand and asks peft.
"""
from __future__ import annotations

import warnings

import pytest

from peftkb.calculators.architecture import architecture_from_config
from peftkb.calculators.params import count_trainable

pytestmark = pytest.mark.peft_oracle

LLAMA = dict(model_type="llama", hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=100)
ROLE_NAMES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj"}


def _method(method_id):
    from peftkb.loader import load_catalog
    from peftkb.query import find_method

    return find_method(load_catalog(), method_id)


def _peft_count(config, build) -> int:
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped = peft.get_peft_model(build(LLAMA), config)
    return wrapped.get_nb_trainable_parameters()[0]


@pytest.mark.parametrize("para", [False, True])
def test_deft_para_trains_p_only(para, build):
    peft = pytest.importorskip("peft")
    arch = architecture_from_config(LLAMA, name="tiny-llama")
    ours = count_trainable(_method("deft"), arch, {"r": 4, "para": para}, targets=["q", "v"]).trainable
    # q: 64 -> 64, v: 64 -> 32 (2 KV heads of 16); P is d_out x r, R (not in PaRa mode) r x d_in; 2 blocks
    by_hand = 2 * sum(4 * d_out + (0 if para else 4 * d_in) for d_in, d_out in ((64, 64), (64, 32)))
    assert ours == by_hand
    config = peft.DeftConfig(r=4, para=para, target_modules=["q_proj", "v_proj"])
    assert ours == _peft_count(config, build)


# 8 adapted modules (q, k, v, o in 2 blocks): 8 * (1 - w) = 8, 5.6 -> 6, 4, 1.6 -> 2, 0 -> max(1, 0) = 1 group
@pytest.mark.parametrize("weight_tying, groups", [(0.0, 8), (0.3, 6), (0.5, 4), (0.8, 2), (1.0, 1)])
def test_tinylora_weight_tying_shares_vectors(weight_tying, groups, build):
    peft = pytest.importorskip("peft")
    arch = architecture_from_config(LLAMA, name="tiny-llama")
    settings = {"r": 2, "u": 16, "weight_tying": weight_tying}
    ours = count_trainable(_method("tinylora"), arch, settings, targets=list(ROLE_NAMES)).trainable
    assert ours == 16 * groups
    config = peft.TinyLoraConfig(r=2, u=16, weight_tying=weight_tying, target_modules=list(ROLE_NAMES.values()))
    assert ours == _peft_count(config, build)


@pytest.mark.parametrize("method_id, settings, keeps_input", [
    ("lora", {"r": 8}, True), ("miss", {"r": 8}, False), ("miss", {"r": 8, "init": "bat"}, True),
    ("tinylora", {"r": 2}, False)])
def test_adapter_input_is_kept_only_where_a_trained_weight_meets_it(method_id, settings, keeps_input):
    """MiSS sums x's r-wide shards before its trained block and TinyLoRA's x meets a frozen projection: autograd
    keeps only rank-r results (peft 0.21.2 forward), where LoRA (and MiSS's bat variant) keep the fp32 input."""
    from peftkb.calculators.memory import estimate_memory

    arch = architecture_from_config(LLAMA, name="tiny-llama")
    method = _method(method_id)
    count = count_trainable(method, arch, settings, targets=["q", "v"])
    est = estimate_memory(method, arch, count, batch=2, seq=16, dtype="bf16", overrides=settings)
    blocks = {t.key: t for t in est.terms}["activations"]
    rank = settings["r"]
    kept = 4 * (64 + 64) if keeps_input else 0  # q and v inputs (d_in 64 each), fp32, per token and block
    adapter = kept + 2 * 4 * rank  # plus the fp32 rank-r intermediate of each of the two modules
    plain = _frozen_model_estimate(arch, batch=2)
    frozen_blocks = {t.key: t for t in plain.terms}["activations"].bytes
    assert blocks.bytes - frozen_blocks == 2 * 2 * 16 * adapter  # L * B * S * (bytes per token per block)


def _frozen_model_estimate(arch, batch: int):
    """Intrinsic SAID has no activation term of its own (generic profile): its blocks keep what the frozen model
    keeps."""
    from peftkb.calculators.memory import estimate_memory, profile_of

    said = _method("intrinsic-said")
    assert profile_of(said, {}, arch).kind == "generic"
    return estimate_memory(said, arch, count_trainable(said, arch), batch=batch, seq=16, dtype="bf16")


@pytest.mark.parametrize("method_id", ["fourierft", "waveft"])
def test_dense_delta_methods_keep_the_rebuilt_update_and_the_fp32_input(method_id):
    """FourierFT and WaveFT rebuild dW (d_out x d_in, fp32) each forward and apply F.linear(x.float(), dW): per
    block autograd keeps each adapted module's dW and its fp32 input (peft 0.21.2 forward)."""
    from peftkb.calculators.memory import estimate_memory

    arch = architecture_from_config(LLAMA, name="tiny-llama")
    settings = {"n_frequency": 100}
    method = _method(method_id)
    count = count_trainable(method, arch, settings, targets=["q", "v"])
    est = estimate_memory(method, arch, count, batch=2, seq=16, dtype="bf16", overrides=settings)
    ours = {t.key: t for t in est.terms}["activations"].bytes
    frozen = {t.key: t for t in _frozen_model_estimate(arch, batch=2).terms}["activations"].bytes
    inputs = 2 * 2 * 16 * 4 * (64 + 64)  # L * B * S * fp32 inputs of q and v (d_in 64 each)
    updates = 2 * 4 * (64 * 64 + 64 * 32)  # L * fp32 dW of q (64 x 64) and v (64 -> 32), once per block
    assert ours - frozen == inputs + updates


def test_boft_keeps_its_input_output_and_three_rotation_matrices(build):
    """BOFT (one butterfly factor) rotates x by a dense d_in x d_in matrix built each forward: autograd keeps x, the
    output scaled by boft_s, and three d_in x d_in matrices per module, all in the model dtype. The estimate's
    terms equal a hand count, and the hand count equals what peft's forward saves (saved_tensors_hooks)."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from peftkb.calculators.memory import estimate_memory

    arch = architecture_from_config(LLAMA, name="tiny-llama")
    method = _method("boft")
    settings = {"block_size": 4}
    count = count_trainable(method, arch, settings, targets=["q", "v"])
    est = estimate_memory(method, arch, count, batch=2, seq=16, dtype="bf16", overrides=settings)
    ours = {t.key: t for t in est.terms}["activations"].bytes
    frozen = {t.key: t for t in _frozen_model_estimate(arch, batch=2).terms}["activations"].bytes
    per_token = 2 * (64 + 64) + 2 * (64 + 32)  # q: 64 -> 64, v: 64 -> 32, bf16
    dense = 3 * 2 * (64 * 64) * 2  # three 64 x 64 bf16 matrices for each of q and v
    assert ours - frozen == 2 * (2 * 16 * per_token + dense)  # 2 blocks

    # peft's forward on one 64 -> 32 layer saves x, the scaled output and three 64 x 64 matrices (+ small tensors)
    class One(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.v = torch.nn.Linear(64, 32, bias=False)

        def forward(self, x):
            return self.v(x)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(One().to(torch.bfloat16), peft.BOFTConfig(boft_block_size=4, target_modules=["v"]))
    owned = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in owned:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x = torch.randn(2, 16, 64, dtype=torch.bfloat16, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    big = sorted(n for n in saved.values() if n >= 2 * 16 * 32 * 2)
    assert big == sorted([2 * 16 * 64 * 2, 2 * 16 * 32 * 2] + [64 * 64 * 2] * 3)


IA3_PER_TARGET = "is_ffn * d_in + (1 - is_ffn) * d_out"  # catalog/ia3.yaml's per_target (asserted below)


@pytest.mark.parametrize("roles", [["k", "v", "down"], ["q", "k", "v", "o", "gate", "up", "down"]])
def test_is_ffn_lets_a_per_target_formula_count_ia3_as_peft(roles, build):
    """(IA)^3 scales a feed-forward module's input (d_in) and any other module's output (d_out); the per-target
    symbol is_ffn (1 for gate, up, down) lets one formula say so. Checked against peft with the suite's two target
    sets (feedforward_modules = the targeted gate/up/down), for the count the MetaMathQA all-attn run measured."""
    from types import SimpleNamespace

    peft = pytest.importorskip("peft")
    from peftkb.loader import load_catalog
    from peftkb.query import find_method

    assert find_method(load_catalog(), "ia3").trainable_params.per_target == IA3_PER_TARGET
    names = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj", "up": "up_proj",
             "down": "down_proj"}
    method = SimpleNamespace(id="ia3-per-target", hyperparameters=[], properties=None,
                             trainable_params=SimpleNamespace(per_target=IA3_PER_TARGET, per_layer=None, total=None,
                                                              targets=["k", "v", "down"], exact=True, note=None))
    arch = architecture_from_config(LLAMA, name="tiny-llama")
    ours = count_trainable(method, arch, targets=roles).trainable
    sizes = {"q": (64, 64), "k": (64, 32), "v": (64, 32), "o": (64, 64), "gate": (64, 96), "up": (64, 96),
             "down": (96, 64)}
    assert ours == 2 * sum(sizes[r][0] if r in ("gate", "up", "down") else sizes[r][1] for r in roles)
    config = peft.IA3Config(target_modules=[names[r] for r in roles],
                            feedforward_modules=[names[r] for r in roles if r in ("gate", "up", "down")])
    assert ours == _peft_count(config, build)
