"""`peftkb convert`: a trained reference adapter becomes a peft adapter folder that `PeftModel.from_pretrained`
loads to the same outputs (fp32, 1e-5), on tiny Llama, BERT and T5 models; and back, bit for bit."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from tests.conftest import run_cli

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
from safetensors.torch import load_file  # noqa: E402

from peftkb.interop import convert as conv  # noqa: E402
from reference_impls import METHODS  # noqa: E402
from reference_impls._core import save_trainable  # noqa: E402

FAMILIES = {
    "llama": (dict(model_type="llama", hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=50), transformers.AutoModelForCausalLM, "causal-lm"),
    "bert": (dict(model_type="bert", hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  vocab_size=50, max_position_embeddings=64), transformers.AutoModel, "feature-extraction"),
    "t5": (dict(model_type="t5", d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, vocab_size=50),
           transformers.T5ForConditionalGeneration, "seq2seq-lm"),
}
CASES = [  # (method, family, reference config)
    ("lora", "llama", dict(r=4, alpha=8, target_modules=("q", "v", "down"))),
    ("lora", "bert", dict(r=4, alpha=8, target_modules=("q", "v"))),
    ("lora", "t5", dict(r=4, alpha=8, target_modules=("q", "v"))),
    ("dora", "llama", dict(r=4, alpha=8, target_modules=("q", "v", "down"))),
    ("dora", "bert", dict(r=4, alpha=8, target_modules=("q", "v"))),
    ("loha", "llama", dict(r=4, alpha=8, target_modules=("q", "v"))),
    ("loha", "t5", dict(r=4, alpha=8, target_modules=("q", "v"))),
    ("vera", "llama", dict(r=8, target_modules=("q", "v"), projection_prng_key=3)),
    ("vera", "t5", dict(r=8, target_modules=("q", "v"), projection_prng_key=3)),
    ("ia3", "llama", dict(target_modules=("k", "v", "down"), feedforward_modules=("down",))),
    ("ia3", "t5", dict(target_modules=("k", "v", "down"), feedforward_modules=("down",))),
    ("adalora", "llama", dict(init_r=4, target_r=2, alpha=8, target_modules=("q", "v"))),
    ("adalora", "bert", dict(init_r=4, target_r=2, alpha=8, target_modules=("q", "v"))),
    ("prompt-tuning", "llama", dict(n_virtual_tokens=3)),
    ("prefix-tuning", "llama", dict(n_virtual_tokens=3, prefix_projection=False)),
]


@pytest.fixture(scope="module")
def base_folders(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for family, (cfg, auto, _) in FAMILIES.items():
        folder = tmp_path_factory.mktemp(f"tiny-{family}")
        torch.manual_seed(0)
        model = auto.from_config(transformers.AutoConfig.for_model(**cfg)) if auto is not transformers.T5ForConditionalGeneration \
            else auto(transformers.AutoConfig.for_model(**cfg))
        model.save_pretrained(folder)
        out[family] = folder
    return out


def _load(family: str, folder: Path):
    _, auto, _ = FAMILIES[family]
    return auto.from_pretrained(folder).eval()


def _inputs(family: str) -> dict:
    ids = torch.tensor([[3, 7, 11, 2, 9], [5, 1, 8, 4, 6]])
    if family == "t5":
        return {"input_ids": ids, "decoder_input_ids": ids[:, :3]}
    return {"input_ids": ids}


def _output(model, family: str):
    out = model(**_inputs(family))
    return out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state


def _trained_run(method: str, family: str, config: dict, base: Path, run: Path):
    """A reference model with every trainable tensor moved off its initial value, saved as a peftkb run."""
    Config, apply = METHODS[method]
    model = apply(_load(family, base), Config(**config))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    run.mkdir()
    save_trainable(model, run / conv.RUN_ADAPTER)
    record = {"method": method, "method_config": {k: list(v) if isinstance(v, tuple) else v for k, v in
                                                  vars(Config(**config)).items()},
              "model_folder": str(base), "task": FAMILIES[family][2], "labels": None, "options": {"seed": 0}}
    (run / conv.RUN_MARKER).write_text(json.dumps(record), encoding="utf-8")
    return model.eval()


@pytest.mark.parametrize("method, family, config", CASES, ids=[f"{m}-{f}" for m, f, _ in CASES])
def test_peft_loads_the_converted_adapter_to_the_same_outputs(method, family, config, base_folders, tmp_path):
    ours = _trained_run(method, family, config, base_folders[family], tmp_path / "run")
    conv.run_to_peft(tmp_path / "run", tmp_path / "peft")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.PeftModel.from_pretrained(_load(family, base_folders[family]), str(tmp_path / "peft")).eval()
    with torch.no_grad():
        expected, got = _output(ours, family), _output(theirs, family)
    base = _output(_load(family, base_folders[family]), family)
    n = base.shape[1]
    if method == "prompt-tuning":  # both return the virtual tokens' positions before the input's
        assert expected.shape[1] == got.shape[1] == n + config["n_virtual_tokens"]
    assert not torch.allclose(expected[:, -n:], base)  # the adapter acts
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method, family, config", CASES, ids=[f"{m}-{f}" for m, f, _ in CASES])
def test_a_round_trip_is_bit_exact(method, family, config, base_folders, tmp_path):
    _trained_run(method, family, config, base_folders[family], tmp_path / "run")
    conv.run_to_peft(tmp_path / "run", tmp_path / "peft")
    conv.peft_to_run(tmp_path / "peft", tmp_path / "back")
    before, after = load_file(str(tmp_path / "run" / conv.RUN_ADAPTER)), load_file(str(tmp_path / "back" / conv.RUN_ADAPTER))
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    record = json.loads((tmp_path / "back" / conv.RUN_MARKER).read_text())
    assert record["method"] == method and record["model_folder"] == str(base_folders[family])


def test_ia3_vectors_take_peft_layouts():
    l_attn, l_ff = torch.arange(4.0), torch.arange(6.0)
    out = conv.to_peft_tensors("ia3", {"m.k_proj.l": l_attn, "m.down_proj.l": l_ff}, feedforward={"m.down_proj"})
    assert out["base_model.model.m.k_proj.ia3_l"].shape == (4, 1)   # scales output features
    assert out["base_model.model.m.down_proj.ia3_l"].shape == (1, 6)  # scales input features


def test_the_cli_converts_and_refuses_in_one_line(base_folders, tmp_path):
    _trained_run("lora", "llama", dict(r=2, alpha=4, target_modules=("q",)), base_folders["llama"], tmp_path / "run")
    done = run_cli("convert", str(tmp_path / "run"), "--to", "peft", "-o", str(tmp_path / "p"))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [conv.PEFT_CONFIG, conv.PEFT_ADAPTER]
    again = run_cli("convert", str(tmp_path / "run"), "--to", "peft", "-o", str(tmp_path / "p"))
    assert again.returncode == 2 and "not an empty folder" in again.stderr
    both = run_cli("convert", str(tmp_path / "run"), "--to", "peft", "--from", "peft", "-o", str(tmp_path / "q"))
    assert both.returncode == 2 and "exactly one" in both.stderr
    not_a_run = run_cli("convert", str(tmp_path), "--to", "peft", "-o", str(tmp_path / "r"))
    assert not_a_run.returncode == 2 and "not a peftkb train output" in not_a_run.stderr
    assert "Traceback" not in not_a_run.stderr
