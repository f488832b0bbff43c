"""Import Hugging Face peft's MetaMathQA method-comparison results into `evidence/peft-metamathqa.yaml`.

A maintainer's tool, run by hand when peft publishes new runs; peftkb itself reads only the YAML it writes.
It reads `method_comparison/MetaMathQA/results/*.json` at one pinned commit of a local peft clone (with
`git show`, so a bare mirror works), keeps, for each run, the numbers a practitioner compares (test
accuracy on GSM8K, trainable parameters, peak accelerator memory, train time, checkpoint size) with the
JSON field each came from, and maps the run to a catalog method and its hyperparameters. A run that maps
to no catalog method is kept with the reason, never dropped.

    python benchmarks/evidence/import_peft_metamathqa.py --peft-git /path/to/peft --commit <sha>
    python benchmarks/evidence/import_peft_metamathqa.py --remap   # after a catalog or mapping change

`--remap` maps the runs already in the YAML again (method and settings from each run's stored peft
config), without a peft clone: the measured numbers and their provenance are kept as they are.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from peftkb.interop import peft_import  # noqa: E402
from peftkb.loader import load_catalog  # noqa: E402

RESULTS = "method_comparison/MetaMathQA/results"
REPOSITORY = "https://github.com/huggingface/peft"
#: Llama-3.2-3B's hidden size: the input width of the q/k/v projections the suite adapts.
HIDDEN = 3072


def _oft_block_size(config: dict) -> int | None:
    """peft's OFT takes either oft_block_size or r (the number of blocks, so b = d_in / r); the catalog takes b."""
    if config.get("oft_block_size"):
        return config["oft_block_size"]
    if config.get("r") and all(t in ("q_proj", "k_proj", "v_proj") for t in config.get("target_modules") or []):
        return HIDDEN // config["r"] if HIDDEN % config["r"] == 0 else None
    return None


def _osf_trainable_rank(config: dict) -> int | None:
    """OSF's rank_pattern maps modules to their effective_rank (frozen directions); when every module of the suite's
    model keeps the same t = min(d_in, d_out) - effective_rank trainable, that t is the catalog's trainable_rank."""
    pattern = config.get("rank_pattern")
    if config.get("peft_type") != "OSF" or not isinstance(pattern, dict) or not pattern:
        return None
    from peftkb.calculators.architecture import load_model

    modules = load_model(SUITE_PRESET).modules
    kept = set()
    for key, frozen in pattern.items():
        hits = [m for m in modules if m.name == key or m.name.endswith("." + key)]
        if not hits or not isinstance(frozen, int):
            return None
        kept |= {min(m.d_in, m.d_out) - frozen for m in hits}
    return kept.pop() if len(kept) == 1 and min(kept) > 0 else None


#: the preset of the suite's model (meta-llama/Llama-3.2-3B), for the module shapes a rank_pattern refers to
SUITE_PRESET = "llama-3.2-3b"
#: catalog hyperparameters that the suite's configs state another way: name -> how to read it from the config
DERIVED = {"block_size": lambda config: _oft_block_size(config) if config.get("peft_type") == "OFT" else None,
           "trainable_rank": _osf_trainable_rank}
#: What each kept number is, and where in a result file it is read.
FIELDS = {
    "test_accuracy": "train_info.metrics[last with 'test accuracy']['test accuracy']",
    "num_trainable_params": "train_info.num_trainable_params",
    "num_total_params": "train_info.num_total_params",
    "accelerator_memory_max": "train_info.accelerator_memory_max",
    "accelerator_memory_reserved_99th": "train_info.accelerator_memory_reserved_99th",
    "train_time_s": "train_info.train_time",
    "checkpoint_bytes": "train_info.file_size",
}
#: Runs named for a LoRA variant the catalog has no entry for: experiment-name fragment -> reason.
UNCATALOGUED = {"bdlora": "BD-LoRA (LoraConfig use_bdlora, block-diagonal factors): a peft LoRA option with no "
                          "catalog entry",
                "mica": "LoraConfig init_lora_weights='mica': a peft LoRA initialisation with no catalog entry"}


def git_show(git_dir: Path, commit: str, path: str) -> str:
    return subprocess.run(["git", "--git-dir", str(git_dir), "show", f"{commit}:{path}"], check=True,
                          capture_output=True, text=True).stdout


def result_files(git_dir: Path, commit: str) -> list[str]:
    out = subprocess.run(["git", "--git-dir", str(git_dir), "ls-tree", "--name-only", f"{commit}:{RESULTS}"],
                         check=True, capture_output=True, text=True).stdout
    return sorted(name for name in out.split() if name.endswith(".json"))


def match_method(name: str, config: dict, catalog) -> tuple[str | None, str]:
    """(catalog id, reason) for one run; the id is None when no entry fits.

    The run's file name tells what its config cannot: full fine-tuning (no peft config), LoRA trained with
    the LoRA-FA optimizer, and variants the catalog has no entry for. Otherwise the config decides,
    exactly as for a user's adapter_config.json (`peftkb.interop.peft_import.method_of`).
    """
    if not config:
        return ("full-fine-tuning", "no peft config: full fine-tuning") if name.startswith("full-finetuning") \
            else (None, "no peft config and not a full fine-tuning run")
    for fragment, reason in UNCATALOGUED.items():
        if fragment in name:
            return None, reason
    if config.get("peft_type") == "LORA" and "lorafa" in name:
        return "lora-fa", "LoRA trained with peft's LoRA-FA optimizer (create_lorafa_optimizer)"
    return peft_import.method_of(config, catalog)


def settings_of(method, config: dict) -> dict:
    """The run's values of the method's catalog hyperparameters, read from its peft config."""
    return peft_import.settings_of(method, config, {name: read(config) for name, read in DERIVED.items()})


def scalar_config(config: dict) -> dict:
    """The peft config without nulls, empty values, nested configs and bookkeeping fields; a flat mapping of
    numbers (a rank_pattern) is kept, since it can set the count."""
    skip = {"base_model_name_or_path", "revision", "inference_mode", "auto_mapping", "peft_version", "task_type",
            "megatron_core"}

    def flat_numbers(v) -> bool:
        return isinstance(v, dict) and bool(v) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                       for x in v.values())

    return {k: v for k, v in sorted(config.items())
            if k not in skip and v is not None and (not isinstance(v, dict) or flat_numbers(v)) and v != []}


def import_runs(git_dir: Path, commit: str) -> dict:
    catalog = load_catalog()
    methods = {m.id: m for m in catalog.methods}
    runs, settings_seen = [], None
    for name in result_files(git_dir, commit):
        data = json.loads(git_show(git_dir, commit, f"{RESULTS}/{name}"))
        info, train = data["run_info"], data["train_info"]
        config = info.get("peft_config") or {}
        peft_type = config.get("peft_type")
        method_id, reason = match_method(name, config, catalog)
        tests = [m for m in train["metrics"] if "test accuracy" in m]
        tc = info["train_config"]
        setting = {"model": tc["model_id"], "dtype": tc["dtype"], "batch_size": tc["batch_size"],
                   "max_seq_length": tc["max_seq_length"], "max_steps": tc["max_steps"],
                   "optimizer": tc["optimizer_type"], "lr": tc["optimizer_kwargs"].get("lr"),
                   "gradient_checkpointing": tc["use_gc"], "use_amp": tc["use_amp"],
                   "autocast_adapter_dtype": tc["autocast_adapter_dtype"],
                   "accelerator": data["meta_info"]["system_info"]["accelerator"]}
        settings_seen = settings_seen or setting
        run = {
            "file": f"{RESULTS}/{name}",
            "experiment": info["experiment_name"],
            "status": train["status"],
            "method": method_id,
            "mapping": reason,
            "peft_type": peft_type,
            "settings": settings_of(methods[method_id], config) if method_id in methods else {},
            "peft_config": scalar_config(config),
            "setting": setting,
            "peft_version": data["meta_info"]["package_info"].get("peft-version"),
            "measured": {
                "test_accuracy": round(tests[-1]["test accuracy"], 6) if tests else None,
                "num_trainable_params": train["num_trainable_params"],
                "num_total_params": train["num_total_params"],
                "accelerator_memory_max": train["accelerator_memory_max"],
                "accelerator_memory_reserved_99th": train["accelerator_memory_reserved_99th"],
                "train_time_s": round(train["train_time"], 1),
                "checkpoint_bytes": train["file_size"],
            },
        }
        runs.append(run)
    return {
        "id": "peft-metamathqa",
        "title": "Hugging Face peft method comparison: Llama-3.2-3B on MetaMathQA, tested on GSM8K",
        "provenance": {"repository": REPOSITORY, "commit": commit, "path": RESULTS, "fields": FIELDS,
                       "license": "Apache-2.0 (the peft repository)"},
        "runs": runs,
    }


def remap_runs(source: dict) -> dict:
    """`source` (a YAML this tool wrote) with every run's method, mapping and settings derived again from its
    stored peft config; the measured numbers and the provenance are left untouched."""
    catalog = load_catalog()
    methods = {m.id: m for m in catalog.methods}
    for run in source["runs"]:
        config = dict(run.get("peft_config") or {})
        if run.get("peft_type"):
            config["peft_type"] = run["peft_type"]
        method_id, reason = match_method(Path(run["file"]).name, config if run.get("peft_type") else {}, catalog)
        run["method"], run["mapping"] = method_id, reason
        run["settings"] = settings_of(methods[method_id], config) if method_id in methods else {}
    return source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peft-git", type=Path, help="a peft clone's .git folder (or a bare mirror)")
    parser.add_argument("--commit", help="the commit to read, pinned in the output")
    parser.add_argument("--remap", action="store_true", help="map the runs already in --out again; no clone needed")
    parser.add_argument("--out", type=Path, default=ROOT / "evidence" / "peft-metamathqa.yaml")
    args = parser.parse_args()
    import yaml

    if args.remap:
        source = remap_runs(yaml.safe_load(args.out.read_text(encoding="utf-8")))
    elif args.peft_git and args.commit:
        source = import_runs(args.peft_git, args.commit)
    else:
        parser.error("give --peft-git and --commit, or --remap")
    header = ("# Measured evidence: every number with its provenance (repository, commit, file, field).\n"
              "# Written by benchmarks/evidence/import_peft_metamathqa.py; do not edit by hand.\n")
    tmp = args.out.with_suffix(".tmp")
    class NoAliases(yaml.SafeDumper):  # the knowledge base refuses YAML aliases: write every value out
        def ignore_aliases(self, data) -> bool:
            return True

    text = yaml.dump(source, Dumper=NoAliases, sort_keys=False, width=110, allow_unicode=True)
    tmp.write_text(header + text, encoding="utf-8")
    tmp.replace(args.out)
    mapped = sum(r["method"] is not None for r in source["runs"])
    print(f"{args.out}: {len(source['runs'])} runs, {mapped} mapped, {len(source['runs']) - mapped} unmapped")


if __name__ == "__main__":
    main()
