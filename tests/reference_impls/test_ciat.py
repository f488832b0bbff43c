"""CIAT-specific promises: where the three kinds of adapter sit, what each computes, and the count."""
from __future__ import annotations

import torch

from impl_cases import batch_for, formula_count, fresh
from reference_impls import ciat
from reference_impls._core import count_trainable


def _adapters(model) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (ciat.CIATAdapter, ciat.CIATLayerAdapter))]


def test_default_adapters_sit_where_the_authors_code_puts_them():
    """Embedding adapters on both sides, self-attention and FFN adapters in every block, none beside the
    decoder's encoder-decoder attention (transformer_decoder_CIAT.py freezes it and gives it no adapter)."""
    model = ciat.apply(fresh("tiny-t5"), ciat.CIATConfig(bottleneck=8))
    assert sorted(_adapters(model)) == sorted(["decoder.ciat_emb_adapter"] + [
        f"decoder.block.{i}.layer.{j}.ciat_adapter" for i in (0, 1) for j in (0, 2)] + [
        "encoder.ciat_emb_adapter"] + [
        f"encoder.block.{i}.layer.{j}.ciat_adapter" for i in (0, 1) for j in (0, 1)])
    assert isinstance(model.encoder.ciat_emb_adapter, ciat.CIATAdapter)  # own layer norm
    assert not hasattr(model.encoder.block[0].layer[0].ciat_adapter, "ln")  # layer adapters have none
    assert ciat.CIATConfig().cross_attention is False


def test_counts_default_matches_the_catalog_and_the_cross_attention_extension_adds_one_per_decoder_block():
    base = fresh("tiny-t5")
    d, b = 32, 16  # tiny-t5: d_model 32, 2 encoder + 2 decoder blocks; default bottleneck d_model // 2
    emb, layer = 2 * d * b + b + 3 * d, 2 * d * b + b + d
    default = ciat.apply(fresh("tiny-t5"), ciat.CIATConfig())
    assert count_trainable(default) == 2 * emb + 2 * 4 * layer
    assert formula_count("ciat", base, ciat.CIATConfig()) == 2 * emb + 2 * 4 * layer
    cross = ciat.apply(fresh("tiny-t5"), ciat.CIATConfig(cross_attention=True))
    assert count_trainable(cross) == 2 * emb + (5 * 4 // 2) * layer
    assert [n for n in _adapters(cross) if ".layer.1." in n and n.startswith("decoder")] == [
        "decoder.block.0.layer.1.ciat_adapter", "decoder.block.1.layer.1.ciat_adapter"]


def test_default_bottleneck_is_half_of_d_model():
    model = ciat.apply(fresh("tiny-t5"), ciat.CIATConfig())
    assert model.encoder.ciat_emb_adapter.down.out_features == 16
    assert model.decoder.block[0].layer[2].ciat_adapter.down.out_features == 16


def _rms_norm(x, weight, eps):  # T5's pre-norm, written out: x / sqrt(mean(x^2) + eps) * w
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _randomise(adapter):
    with torch.no_grad():
        adapter.up.weight.normal_()
        adapter.up.bias.normal_()


def test_layer_adapters_add_A_of_the_sublayers_own_pre_norm_output_in_parallel():
    """y = x + Sublayer(LN(x)) + W_up ReLU(W_down LN(x) + b_down) + b_up, LN the sublayer's frozen norm."""
    base = fresh("tiny-t5")
    model = ciat.apply(fresh("tiny-t5"), ciat.CIATConfig(bottleneck=8))
    x = torch.randn(2, 5, 32)
    for path in ("decoder.block.1.layer.2", "encoder.block.0.layer.0"):  # an FFN and a self-attention
        sub, base_sub = model.get_submodule(path), base.get_submodule(path)
        a = sub.ciat_adapter
        _randomise(a)
        z = _rms_norm(x, sub.layer_norm.weight, sub.layer_norm.variance_epsilon)
        branch = torch.relu(z @ a.down.weight.T + a.down.bias) @ a.up.weight.T + a.up.bias
        got, want = sub(x), base_sub(x)
        got, want = (got[0], want[0]) if isinstance(got, tuple) else (got, want)
        torch.testing.assert_close(got, want + branch, atol=1e-5, rtol=1e-5)


def test_embedding_adapter_corrects_the_embeddings_before_the_first_block():
    base = fresh("tiny-t5")
    model = ciat.apply(fresh("tiny-t5"), ciat.CIATConfig(bottleneck=8, intra_layer=False))
    a = model.encoder.ciat_emb_adapter
    _randomise(a)
    with torch.no_grad():
        a.ln.weight.normal_()
        a.ln.bias.normal_()
    ids = batch_for(model)["input_ids"]
    e = base.shared(ids)  # (B, T, d)
    ln = torch.nn.functional.layer_norm(e, (32,), a.ln.weight, a.ln.bias, a.ln.eps)  # the adapter's own LN
    correction = torch.relu(ln @ a.down.weight.T + a.down.bias) @ a.up.weight.T + a.up.bias
    expected = base.encoder(inputs_embeds=e + correction).last_hidden_state
    got = model.encoder(input_ids=ids).last_hidden_state
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, base.encoder(input_ids=ids).last_hidden_state, atol=1e-3)
