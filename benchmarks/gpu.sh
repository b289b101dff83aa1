#!/usr/bin/env bash
# The CUDA checks and benchmarks of issue 7 in one run, for a GPU machine lent for a few minutes.
#
#   bash benchmarks/gpu.sh [OUT_DIR]        (default OUT_DIR: $OUT, else benchmarks/results/gpu)
#   GPU_STEPS="tests main_job" bash benchmarks/gpu.sh    (only the steps named; all of them take
#                                                       ~15 minutes, more than one 10-minute call)
#
# Runs from the repository root without installing the project (PYTHONPATH), on a machine that has
# torch and pytest; xformers is used when importable. The trainer needs DeepSpeed, which a lent
# machine lacks: carry it as wheels (docs/benchmarks.md, session 12: `DS_BUILD_OPS=0 pip wheel
# deepspeed` gives a pure-Python one; add hjson, pydantic, pydantic-core, annotated-types and
# typing-inspection). Every step has its own time limit so that one slow step cannot eat the
# others, and writes its JSON into OUT_DIR as soon as it ends:
#   1. the CUDA tests: xformers and FlexAttention (forward and backward) against dense SDPA, a whole
#      training step per backend, generation (cache, plans, samplers, captions) against the CPU,
#      the trainer on CUDA;
#   2. attention.py: every backend, forward + backward, 256..8192 tokens (attention.json);
#   3. train_step.py: the main job's model, then d=512 x 8 layers at 8.3k tokens per step with each
#      attention backend, and compiled (train_*.json);
#   4. sampling.py: cached vs uncached at 16 blocks per image, batch 1 and 32 (sampling.json);
#   5. the main job, `unimodal train`, end to end (main_job/metrics.json and metrics.jsonl).
set -u
out=${1:-${OUT:-benchmarks/results/gpu}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
py=${PYTHON:-python3}

step() {  # step NAME SECONDS COMMAND...: run with a time limit, say how it ended
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    if [ -n "${GPU_STEPS:-}" ] && [[ " $GPU_STEPS " != *" $name "* ]]; then return; fi
    echo "== $name: start $(date +%T)"
    timeout "$limit" "$@"
    echo "== $name: exit $? after $((SECONDS - start)) s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$py -c "import torch; print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
$py -c "import xformers; print('xformers', xformers.__version__)" || echo "xformers: not importable"

step tests 120 $py -m pytest -q -p no:cacheprovider -rs -k cuda tests/test_backends.py tests/test_generation.py \
    tests/test_train.py
step attention 120 $py benchmarks/attention.py --device cuda --repeats 5 --out "$out/attention.json"
train="$py benchmarks/train_step.py --device cuda --steps 20"
step train_tiny 50 $train --out "$out/train_tiny.json"  # the main job's model, attention "auto" (dense at 96 tokens)
d512="--dim 512 --depth 8 --heads 8 --batch 72"  # 72 documents: 8.3k tokens per step
for attn in dense flex xformers; do
    step "train_d512_$attn" 50 $train $d512 model.attention=$attn --out "$out/train_d512_$attn.json"
done
step train_d512_dense_compile 90 $train $d512 model.attention=dense --compile --out "$out/train_d512_compile.json"
step sampling 50 $py benchmarks/sampling.py --device cuda --block-sizes 2 --batches 1 32 --repeats 3 \
    --out "$out/sampling.json"
rm -rf /tmp/main_job
step main_job 300 $py -m unimodal.cli train --out /tmp/main_job
[ -f /tmp/main_job/metrics.jsonl ] && mkdir -p "$out/main_job" && cp /tmp/main_job/metrics.json* "$out/main_job/"
