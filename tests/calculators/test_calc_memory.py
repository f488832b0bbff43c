"""The memory estimator's terms behave as its model says (accuracy is measured in benchmarks/memory_accuracy.py)."""
from __future__ import annotations

from types import SimpleNamespace as NS

import pytest

from peftkb.calculators.architecture import architecture_from_config, load_model
from peftkb.calculators.memory import CUDA_CONTEXT_BYTES, estimate_memory, parse_size, profile_of
from peftkb.calculators.params import count_trainable
from peftkb.errors import UsageError
from peftkb.loader import load_catalog
from peftkb.query import find_method


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@pytest.fixture(scope="module")
def llama():
    return load_model("llama-2-7b")


def estimate(catalog, mid, arch, overrides=None, **kw):
    m = find_method(catalog, mid)
    kw.setdefault("batch", 1)
    kw.setdefault("seq", 512)
    return estimate_memory(m, arch, count_trainable(m, arch, overrides), overrides=overrides, **kw)


def term(est, key):
    return next(t.bytes for t in est.terms if t.key == key)


def test_peak_is_static_plus_larger_phase_plus_overhead(catalog, llama):
    est = estimate(catalog, "lora", llama)
    def phase(name):
        return sum(t.bytes for t in est.terms if t.phase == name)
    assert est.allocated == phase("static") + max(phase("backward"), phase("late"), phase("step"))
    assert est.peak == est.allocated + term(est, "overhead")
    assert all(t.bytes >= 0 and t.formula for t in est.terms)


def test_frozen_bf16_weights_are_two_bytes_per_parameter(catalog, llama):
    est = estimate(catalog, "lora", llama, dtype="bf16")
    assert term(est, "frozen_weights") == 2 * llama.n_params
    assert term(est, "frozen_weights") == estimate(catalog, "lora", llama, dtype="fp32").terms[0].bytes // 2


def test_adapter_weights_grads_and_adam_states_are_fp32(catalog, llama):
    est = estimate(catalog, "lora", llama)
    n = est.trainable
    assert term(est, "trainable_weights") == term(est, "gradients") == term(est, "gradients_early") == 4 * n
    assert term(est, "optimizer_states") == 8 * n


def test_full_fine_tuning_keeps_everything_in_model_dtype(catalog, llama):
    est = estimate(catalog, "full-fine-tuning", llama, dtype="bf16")
    assert term(est, "frozen_weights") == 0
    assert term(est, "trainable_weights") == 2 * llama.n_params
    assert term(est, "optimizer_states") == 4 * llama.n_params
    assert est.peak > 4 * 2 * llama.n_params  # weights + grads + two states


def test_optimizer_choice_changes_only_optimizer_terms(catalog, llama):
    adam = estimate(catalog, "full-fine-tuning", llama, optimizer="adamw")
    sgd = estimate(catalog, "full-fine-tuning", llama, optimizer="sgd")
    bnb = estimate(catalog, "full-fine-tuning", llama, optimizer="adamw-8bit")
    assert term(sgd, "optimizer_states") == 0
    assert 2 * llama.n_params <= term(bnb, "optimizer_states") < term(adam, "optimizer_states")
    assert term(sgd, "activations") == term(adam, "activations")


def test_qlora_stores_nf4_weights_with_constants(catalog, llama):
    est = estimate(catalog, "qlora", llama)
    assert est.quantize == "nf4"
    linear = sum(m.d_in * m.d_out for m in llama.modules if m.roles)
    rest = llama.n_params - linear
    expected = linear * (0.5 + 1 / 64 + 4 / (64 * 256)) + rest * 2
    assert term(est, "frozen_weights") == pytest.approx(expected, rel=1e-9)
    assert term(est, "frozen_weights") < 0.3 * term(estimate(catalog, "lora", llama), "frozen_weights")


def test_quantizing_a_method_that_trains_base_weights_is_an_error(catalog, llama):
    with pytest.raises(UsageError, match="cannot stay 4-bit"):
        estimate(catalog, "full-fine-tuning", llama, quantize="nf4")


def test_gradient_checkpointing_cuts_activations(catalog, llama):
    plain = estimate(catalog, "lora", llama, batch=4, seq=1024)
    ckpt = estimate(catalog, "lora", llama, batch=4, seq=1024, gradient_checkpointing=True)
    assert term(ckpt, "activations") < term(plain, "activations") / 5


def test_activations_grow_linearly_with_sdpa_and_quadratically_with_eager(catalog, llama):
    a1, a2 = (term(estimate(catalog, "lora", llama, seq=s), "activations") for s in (512, 1024))
    e1, e2 = (term(estimate(catalog, "lora", llama, seq=s, attention="eager"), "activations") for s in (512, 1024))
    assert a2 == pytest.approx(2 * a1, rel=1e-6)
    assert e2 > 2.2 * e1


def test_prompt_tuning_lengthens_the_sequence(catalog, llama):
    short = estimate(catalog, "prompt-tuning", llama, {"n_virtual_tokens": 8})
    long = estimate(catalog, "prompt-tuning", llama, {"n_virtual_tokens": 512})
    assert term(long, "activations") > 1.9 * term(short, "activations")
    assert any("virtual tokens" in n for n in long.notes)


def _frozen_base_activations(arch):
    """A method that trains a few new parameters and stores nothing of its own (the activation baseline)."""
    m = NS(id="baseline", hyperparameters=[], properties=NS(trains_base_weights=False),
           implementations=NS(peft=None), trainable_params=NS(per_target=None, per_layer="d_model", total=None,
                                                                targets=[], exact=True, note=None))
    return term(estimate_memory(m, arch, count_trainable(m, arch), batch=1, seq=512), "activations")


def test_bitfit_on_a_model_without_biases_is_refused(catalog, llama):
    """Llama has no bias to train: zero trainable parameters is an error, not an estimate."""
    with pytest.raises(UsageError, match="gives 0 trainable parameters"):
        estimate(catalog, "bitfit", llama)


def test_prefix_tuning_and_adapters_add_activations(catalog, llama):
    base = _frozen_base_activations(llama)
    assert term(estimate(catalog, "prefix-tuning", llama), "activations") > base
    assert term(estimate(catalog, "sequential-adapter", llama), "activations") > base
    assert term(estimate(catalog, "lora", llama), "activations") > base


def test_full_fine_tuning_keeps_linear_inputs(catalog, llama):
    assert term(estimate(catalog, "full-fine-tuning", llama), "activations") > _frozen_base_activations(llama)


def test_cpu_device_has_no_cuda_context(catalog, llama):
    gpu = estimate(catalog, "lora", llama, device="cuda")
    cpu = estimate(catalog, "lora", llama, device="cpu")
    assert term(gpu, "overhead") - term(cpu, "overhead") >= CUDA_CONTEXT_BYTES - 2**20


def test_encoder_only_models_have_no_lm_head_terms(catalog):
    est = estimate(catalog, "lora", load_model("bert-base"))
    assert term(est, "head_activations") == 0 and term(est, "head_transient") == 0


def test_t5_uses_eager_attention(catalog):
    est = estimate(catalog, "lora", load_model("t5-base"))
    assert est.attention == "eager"


def test_unrecognised_method_is_flagged_approximate(llama):
    m = NS(id="mystery", hyperparameters=[], properties=NS(trains_base_weights=False),
           implementations=NS(peft=None), trainable_params=NS(per_target=None, per_layer="d_model", total=None,
                                                                targets=[], exact=True, note=None))
    assert not profile_of(m, {}, llama).recognised
    est = estimate_memory(m, llama, count_trainable(m, llama), batch=1, seq=16)
    assert any("approximate" in n for n in est.notes)


@pytest.mark.parametrize("kw, message", [(dict(dtype="int8"), "--dtype"), (dict(optimizer="lion"), "--optimizer"),
                                         (dict(quantize="int4"), "--quantize"), (dict(device="tpu"), "--device"),
                                         (dict(attention="flash"), "--attention"), (dict(batch=0), "--batch")])
def test_bad_options_are_usage_errors(catalog, llama, kw, message):
    with pytest.raises(UsageError, match=message):
        estimate(catalog, "lora", llama, **kw)


@pytest.mark.parametrize("text, expected", [("24GB", 24 * 2**30), ("24GiB", 24 * 2**30), ("80g", 80 * 2**30),
                                            ("512MB", 512 * 2**20), ("1.5TB", int(1.5 * 2**40)), ("2 TiB", 2 * 2**40),
                                            ("1.5 MiB", 3 * 2**19)])
def test_memory_sizes_parse_in_binary_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "-4GB", "0GB", "4PB", "24B", "24", "", "640KB", "1e3GB", "nanGB", "9" * 40 + "GB"])
def test_bad_memory_sizes_are_usage_errors(text):
    with pytest.raises(UsageError):
        parse_size(text)


# -- the activation model against the tensors autograd really keeps ------------------------------------
TINY_LLAMA = dict(model_type="llama", hidden_size=128, intermediate_size=344, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=512)


def _saved_bytes(model, ids) -> int:
    """Bytes of the distinct floating-point tensors autograd saves for backward (parameters excluded)."""
    import torch

    seen: dict[int, tuple[int, bool]] = {}

    def pack(t):
        storage = t.untyped_storage()
        seen.setdefault(storage.data_ptr(), (storage.nbytes(), t.dtype.is_floating_point))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, (n, floating) in seen.items() if ptr not in params and floating)


@pytest.mark.peft_oracle
@pytest.mark.parametrize("method_id, dtype, adapter_dtype", [
    ("lora", "fp32", "fp32"), ("lora", "bf16", "fp32"), ("lora", "bf16", "model"), ("full-fine-tuning", "fp32", "fp32"),
    ("full-fine-tuning", "bf16", "fp32"), ("ia3", "bf16", "fp32"), ("ia3", "bf16", "model"),
    ("prompt-tuning", "fp32", "fp32")])
def test_activation_terms_match_the_tensors_autograd_saves(catalog, method_id, dtype, adapter_dtype):
    """activations + head terms, less the logits (alive but not saved), vs saved_tensors_hooks on a tiny Llama."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    hf = transformers.LlamaConfig(**{k: v for k, v in TINY_LLAMA.items() if k != "model_type"})
    hf._attn_implementation = "sdpa"
    model = transformers.LlamaForCausalLM(hf).to({"fp32": torch.float32, "bf16": torch.bfloat16}[dtype])
    overrides = {}
    autocast = adapter_dtype == "fp32"  # peft's autocast_adapter_dtype: upcast the adapter to fp32, or not
    if method_id == "lora":
        model = peft.get_peft_model(model, peft.LoraConfig(r=8, target_modules=["q_proj", "v_proj"]),
                                    autocast_adapter_dtype=autocast)
    elif method_id == "ia3":
        model = peft.get_peft_model(model, peft.IA3Config(target_modules=["k_proj", "v_proj", "down_proj"],
                                                          feedforward_modules=["down_proj"]),
                                    autocast_adapter_dtype=autocast)
    elif method_id == "prompt-tuning":
        model = peft.get_peft_model(model, peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=20))
        overrides = {"n_virtual_tokens": 20}
    model.train()
    batch, seq = 2, 64
    saved = _saved_bytes(model, torch.randint(0, 512, (batch, seq)))

    arch = architecture_from_config(TINY_LLAMA)
    method = find_method(catalog, method_id)
    est = estimate_memory(method, arch, count_trainable(method, arch, overrides), batch=batch, seq=seq, dtype=dtype,
                          device="cpu", overrides=overrides, adapter_dtype=adapter_dtype)
    if method_id in ("lora", "ia3"):  # the adapter weights are in the dtype asked for
        a = 4 if adapter_dtype == "fp32" else 2
        assert {p.element_size() for p in model.parameters() if p.requires_grad} == {a}
        assert term(est, "trainable_weights") == a * est.trainable == term(est, "gradients")
    p = 4 if dtype == "fp32" else 2
    tokens = batch * (seq + overrides.get("n_virtual_tokens", 0))
    modelled = term(est, "activations") + term(est, "head_activations") - p * arch.vocab_size * tokens
    assert modelled == pytest.approx(saved, rel=0.06)


# -- precision: pure bf16 (peft's method-comparison suite) and mixed (fp32 master weights, AMP) -----------------
@pytest.mark.parametrize("method_id", ["full-fine-tuning", "lora"])
def test_pure_bf16_and_mixed_precision_against_an_explicit_recomputation(catalog, llama, method_id):
    pure = estimate(catalog, method_id, llama, dtype="bf16", precision="pure-bf16")
    mixed = estimate(catalog, method_id, llama, dtype="bf16", precision="mixed")
    n = pure.trainable
    base = method_id == "full-fine-tuning"
    t_pure = 2 if base else 4  # pure: trained base weights in bf16, peft's adapters upcast to fp32
    expected = {
        "pure-bf16": dict(frozen_weights=2 * (llama.n_params - (n if base else 0)), trainable_weights=t_pure * n,
                          optimizer_states=2 * t_pure * n, gradients=t_pure * n, gradients_late=t_pure * n),
        "mixed": dict(frozen_weights=2 * (llama.n_params - (n if base else 0)), trainable_weights=4 * n,
                      optimizer_states=8 * n, gradients=4 * n, gradients_late=4 * n, autocast_copies=2 * n),
    }
    for est in (pure, mixed):
        assert est.precision in expected
        for key, value in expected[est.precision].items():
            assert term(est, key) == value, (est.precision, key)
    assert not any(t.key == "autocast_copies" for t in pure.terms)
    # the activations do not depend on where the master weights live
    assert term(pure, "activations") == term(mixed, "activations")
    if base:  # 2 + 2 + 4 bytes per weight against 4 + 4 + 8 (+ 2 for the autocast copy)
        assert mixed.allocated - pure.allocated >= (16 + 2 - 8) * n - 2 * llama.vocab_size * llama.d_model * 4


def test_precision_defaults_to_pure_in_the_model_dtype_and_checks_the_pairing(catalog, llama):
    assert estimate(catalog, "lora", llama, dtype="bf16").precision == "pure-bf16"
    assert estimate(catalog, "lora", llama, dtype="fp16").precision == "pure-fp16"
    assert estimate(catalog, "lora", llama, dtype="fp32", precision="mixed").precision == "fp32"
    with pytest.raises(UsageError, match="needs --dtype bf16"):
        estimate(catalog, "lora", llama, dtype="fp16", precision="pure-bf16")
    with pytest.raises(UsageError, match="--precision must be one of"):
        estimate(catalog, "lora", llama, precision="tf32")


@pytest.mark.peft_oracle
@pytest.mark.parametrize("dtype, adapter_dtype", [("fp32", "fp32"), ("bf16", "fp32"), ("bf16", "model")])
@pytest.mark.parametrize("trainable_rank, rank_pattern", [(8, {"q_proj": 120, "v_proj": 56, "down_proj": 120}),
                                                          (0, None)])
def test_osf_buffers_and_activations_match_peft(catalog, dtype, adapter_dtype, trainable_rank, rank_pattern):
    """OSF (peft 0.21.2): the frozen SVD factors it keeps as buffers, exactly; the tensors its factored forward
    saves (x in fp32, h = x B^T, the factors A and B) within the activation model's tolerance."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    hf = transformers.LlamaConfig(**{k: v for k, v in TINY_LLAMA.items() if k != "model_type"})
    hf._attn_implementation = "sdpa"
    model = transformers.LlamaForCausalLM(hf).to({"fp32": torch.float32, "bf16": torch.bfloat16}[dtype])
    extra = {"rank_pattern": rank_pattern} if rank_pattern else {}
    model = peft.get_peft_model(model, peft.OSFConfig(target_modules=["q_proj", "v_proj", "down_proj"], **extra),
                                autocast_adapter_dtype=adapter_dtype == "fp32")
    model.train()
    batch, seq = 2, 64
    saved = _saved_bytes(model, torch.randint(0, 512, (batch, seq)))
    buffers = sum(b.numel() * b.element_size() for name, b in model.named_buffers() if "_osf_" in name)

    arch = architecture_from_config(TINY_LLAMA)
    method = find_method(catalog, "osf")
    overrides = {"trainable_rank": trainable_rank}
    count = count_trainable(method, arch, overrides, targets=["q", "v", "down"])
    assert count.trainable == model.get_nb_trainable_parameters()[0]
    est = estimate_memory(method, arch, count, batch=batch, seq=seq, dtype=dtype, device="cpu", overrides=overrides,
                          adapter_dtype=adapter_dtype)
    assert term(est, "adapter_buffers") == buffers
    p = 4 if dtype == "fp32" else 2
    modelled = term(est, "activations") + term(est, "head_activations") - p * arch.vocab_size * batch * seq
    assert modelled == pytest.approx(saved, rel=0.06)


@pytest.mark.parametrize("version, rebuilds", [("0.19.2.dev0", True), ("0.20.1.dev0", True), ("0.21.0", False),
                                               ("0.21.2", False), ("1.0.0", False), (None, False), ("main", False)])
def test_osf_layout_follows_the_peft_version(version, rebuilds):
    from peftkb.calculators.memory import osf_rebuilds_weight

    assert osf_rebuilds_weight(version) is rebuilds


@pytest.mark.parametrize("adapter_dtype", ["fp32", "model"])
def test_osf_before_peft_0_21_keeps_every_high_factor_and_the_rebuilt_weight(catalog, adapter_dtype):
    """peft <= 0.20 (checked by hand against huggingface/peft@5d602fdb's source on this tiny Llama: buffers exact,
    activations within 7%): U_high, S_high, V_high of every module, and per module the rebuilt W and U_low S_low
    in place of the factored update's rank-2t hidden and factors. Recomputed here from the shapes."""
    arch = architecture_from_config(TINY_LLAMA)
    method = find_method(catalog, "osf")
    overrides, targets = {"trainable_rank": 8}, ["q", "v", "down"]
    count = count_trainable(method, arch, overrides, targets=targets)
    kw = dict(batch=2, seq=64, dtype="bf16", device="cpu", overrides=overrides, adapter_dtype=adapter_dtype)
    old = estimate_memory(method, arch, count, peft_version="0.19.2.dev0", **kw)
    new = estimate_memory(method, arch, count, peft_version="0.21.2", **kw)
    a = 4 if adapter_dtype == "fp32" else 2
    d, f, kv = 128, 344, 64  # q: 128 -> 128, v: 128 -> 64 (2 kv heads of 32), down: 344 -> 128
    shapes = [(d, d), (d, kv), (f, d)] * arch.n_layers  # (d_in, d_out)
    t = 8
    k = [min(i, o) - t for i, o in shapes]
    assert term(old, "adapter_buffers") == a * sum(kk * (i + o + 1) for kk, (i, o) in zip(k, shapes))
    tokens = 2 * 64
    factored = sum(a * 2 * t * tokens + a * 2 * t * (i + o) for i, o in shapes)
    rebuilt = sum(a * o * (i + t) for i, o in shapes)
    assert term(old, "activations") - term(new, "activations") == rebuilt - factored
    assert any("rebuilt in every forward" in n for n in old.notes)
    assert term(old, "trainable_weights") == term(new, "trainable_weights") == a * count.trainable
