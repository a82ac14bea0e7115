#!/usr/bin/env bash
# Ablation of bench/gpu_check.sh's demo on one GPU: the same budget, but the
# student is distilled toward the teacher only (no cross-entropy on the data:
# KL weight 1 + the per-block cosine), then the family (first-last), eval with
# both pruning baselines and the four patch orders on the same held-out tokens.
#
#   bash bench/gpu_kl_only.sh OUTDIR [STEPS]
#
# Same environment as bench/gpu_check.sh (BOOMERANG_STDLIB, PYTHONPATH).
set -uo pipefail
out=${1:?usage: gpu_kl_only.sh OUTDIR [STEPS]}
steps=${2:-355}
work=${WORK:-/tmp/boomerang-kl}
teacher=${TEACHER:-smollm2-135m} seq=${SEQ:-1024} batch=${BATCH:-16} eval_tokens=${EVAL_TOKENS:-32768}
mkdir -p "$out" "$work"
here=$(cd "$(dirname "$0")" && pwd)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
log() { echo "[$(date +%T)] $*" | tee -a "$out/log.txt"; }
boom() { python3 "$here/boomerang_stdlib.py" "$@"; }

log "1. distill without CE: $steps steps of $batch x $seq tokens, --ce-weight 0 --kl-weight 1"
boom distill "$teacher" -o "$work/student" --steps "$steps" --seq-len "$seq" --batch-size "$batch" --ce-weight 0 \
  --kl-weight 1 --save-every 0 --seed 0 --json > "$out/kl_distill.json" 2> "$out/kl_distill.err"
log "   rc=$?"
log "2. family: every first-last member"
boom family "$work/student" -o "$work/family" --order first-last --all --json > "$out/kl_family_build.json" 2> "$out/kl_family.err"
log "   rc=$?"
log "3. eval: baselines and the four orders on $eval_tokens held-out tokens"
boom eval "$work/family" --baseline prune --calibration-tokens 2048 --compare-orders last-first,first-last,kl-greedy,beam \
  --beam 4 --calib-samples 64 --calib-seq-len 128 --max-tokens "$eval_tokens" --seq-len 256 --plot "$out/kl_family.png" --json \
  > "$out/kl_eval.json" 2> "$out/kl_eval.err"
log "   rc=$?"
for f in "$out"/*.err; do tail -c 1500 "$f" > "$f.t"; mv "$f.t" "$f"; done
log "done"
