#!/usr/bin/env bash
# The GPU check: one script, run on a machine with a GPU (about 4-6 minutes on one H100; each step has a time
# limit, and the whole stays under 8 minutes), that writes everything under benchmarks/gpu_check/:
#
#   1. environment      torch, CUDA, the GPU (nvidia-smi), the commit
#   2. bench_fp32       scripts/bench_pooling.py, float32, eager, the README's three shapes
#   3. bench_bf16       the same in bfloat16
#   4. bench_compiled   bfloat16, the compiled rows against eager, on (64, 2048, 7, 7)  (GPU_CHECK_COMPILE=0: skipped)
#   5. ray_shared_gpu   a 2-job sweep on hydra/launcher=ray with hydra.launcher.ray.remote.num_gpus=0.5: both jobs
#                       on the one GPU at the same time (checked from their records)
#   6. finetune         end to end: ImageNet MobileNetV2 fine-tuned on Flowers-17 with a hybrid pool, 3 epochs
#   7. targets          hybrid(avg,max,gem,attn) forward+backward <= 2x GAP in bf16 on (64, 2048, 7, 7)
#
#   scripts/gpu_check.sh                          # on the GPU machine, from the repository root
#   GPU_CHECK_DEVICE=cpu scripts/gpu_check.sh     # the same steps on a CPU with tiny sizes (tests/test_gpu_check.py)
#
# Settings (environment): GPU_CHECK_OUT (default benchmarks/gpu_check, benchmarks/gpu_check_cpu on the CPU path),
# GPU_CHECK_ROUNDS (bench rounds, default 20), GPU_CHECK_COMPILE (1), PYTHON (default .venv/bin/python, else
# python3); HYBRIDPOOL_DATA_ROOT and TORCH_HOME (default ../shared/data and ../shared/data/torch_home) for the
# fine-tune's data and weights. A step that fails stops the script with its name, its exit status and where its
# output is; summary.md lists every step that ran with its wall time.
set -Eeuo pipefail
cd "$(dirname "$0")/.."

device="${GPU_CHECK_DEVICE:-cuda}"
cpu=0
[[ "$device" == "cpu" ]] && cpu=1
out="${GPU_CHECK_OUT:-benchmarks/gpu_check$([[ $cpu == 1 ]] && echo _cpu)}"
rounds="${GPU_CHECK_ROUNDS:-20}"
compile="${GPU_CHECK_COMPILE:-1}"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
shared="$(cd .. && pwd)/shared/data"
export HYBRIDPOOL_DATA_ROOT="${HYBRIDPOOL_DATA_ROOT:-$shared}"
export TORCH_HOME="${TORCH_HOME:-$shared/torch_home}"
export WANDB_MODE="${WANDB_MODE:-offline}" MPLBACKEND="${MPLBACKEND:-Agg}" HYDRA_FULL_ERROR=1
mkdir -p "$out"
out="$(cd "$out" && pwd)"
export HYBRIDPOOL_LOG_DIR="$out/runs" HYBRIDPOOL_CACHE_DIR="${HYBRIDPOOL_CACHE_DIR:-$out/cache}"
rm -rf "$out/runs"
: > "$out/steps.txt"

step=setup
on_error() {
  local rc=$? why=""
  if [[ $rc == 124 ]]; then why=": over its time limit"; fi
  echo "gpu_check: FAILED in step \"$step\" (exit $rc$why) after ${SECONDS} s; output so far in $out" >&2
  echo "| $step | FAILED (exit $rc$why) | |" >> "$out/steps.txt"
  exit "$rc"
}
trap on_error ERR

# run_step NAME LIMIT_S CMD...: CMD's output to the screen and to $out/NAME.txt, its wall time to steps.txt
run_step() {
  step=$1
  local limit=$2 t0=$SECONDS
  shift 2
  echo "== gpu_check: $step (limit ${limit} s)"
  timeout "$limit" "$@" 2>&1 | tee "$out/$step.txt"
  echo "| $step | ok | $((SECONDS - t0)) s |" >> "$out/steps.txt"
}

if [[ $cpu == 1 ]]; then  # tiny sizes: the steps' plumbing, not the GPU's numbers
  shapes=(8,256,7,7)
  bench=(--device cpu --rounds 3 --no-compile)
  job=(data=synth_detail data.num_train=64 data.num_val=32 data.num_test=32 data.batch_size=32 data.image_size=16
       "model.backbone.widths=[8,16]" trainer=cpu trainer.max_epochs=1)
  ray_gpus=(hydra.launcher.ray.init.num_gpus=1)  # one fake GPU for Ray's bookkeeping; the jobs run on the CPU
  finetune=(trainer=cpu trainer.max_epochs=1 data.image_size=64 data.batch_size=16 data.train_fraction=0.1
            +trainer.limit_train_batches=3 +trainer.limit_val_batches=2 +trainer.limit_test_batches=2)
  limits=(60 60 60 240 240)
else
  shapes=(64,2048,7,7 64,512,14,14 32,256,28,28)
  bench=(--device cuda --rounds "$rounds" --no-compile)
  job=(data=synth_detail data.num_train=512 data.num_val=256 data.num_test=256 data.batch_size=64 trainer=gpu
       trainer.max_epochs=3)
  ray_gpus=(hydra.launcher.ray.init.num_gpus=1)  # Ray's view: one GPU, shared by the two jobs
  finetune=(trainer=gpu trainer.max_epochs=3 data.num_workers=6)
  limits=(90 90 150 150 150)
fi

run_step environment 60 "$PYTHON" - "$device" <<'EOF'
import platform, subprocess, sys
import torch
import hybridpool
device = sys.argv[1]
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, hybridpool at {hybridpool.__file__}")
commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout
print(f"commit {commit or '?'}{' (dirty)' if dirty.strip() else ''}")
if device == "cuda":
    if not torch.cuda.is_available():
        sys.exit("no CUDA device visible to torch: run with GPU_CHECK_DEVICE=cpu for the CPU path")
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}")
    print(subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout)
else:
    print(f"CPU path: {torch.get_num_threads()} threads")
EOF

run_step bench_fp32 "${limits[0]}" "$PYTHON" scripts/bench_pooling.py "${bench[@]}" --dtype float32 --shapes "${shapes[@]}"
run_step bench_bf16 "${limits[1]}" "$PYTHON" scripts/bench_pooling.py "${bench[@]}" --dtype bfloat16 --shapes "${shapes[@]}"
if [[ $cpu == 0 && $compile == 1 ]]; then
  run_step bench_compiled "${limits[2]}" "$PYTHON" scripts/bench_pooling.py --device cuda --dtype bfloat16 \
    --shapes 64,2048,7,7 --rounds "$rounds" --layers compiled
fi

# two jobs on one GPU: each asks Ray for half of it, so both hold it at once
run_step ray_shared_gpu "${limits[3]}" "$PYTHON" -m hybridpool.cli -m "${job[@]}" seed=0,1 logger=csv callbacks=checkpoint \
  trainer.enable_progress_bar=false trainer.enable_model_summary=false task_name=gpu_check_ray hydra/launcher=ray \
  hydra.launcher.ray.init.num_cpus=2 "${ray_gpus[@]}" +hydra.launcher.ray.init.include_dashboard=false \
  hydra.launcher.ray.remote.num_cpus=1 hydra.launcher.ray.remote.num_gpus=0.5
step=ray_shared_gpu_records
"$PYTHON" - "$HYBRIDPOOL_LOG_DIR/gpu_check_ray/multirun" <<'EOF' 2>&1 | tee -a "$out/ray_shared_gpu.txt"
import json, sys
from pathlib import Path
recs = [json.loads(p.read_text()) for p in sorted(Path(sys.argv[1]).glob("*/*/results.json"))]
assert len(recs) == 2 and all(r["status"] == "completed" for r in recs), [r["status"] for r in recs]
gpus = [r["devices"]["CUDA_VISIBLE_DEVICES"] for r in recs]
a, b = (r["timing"] for r in recs)
overlap = a["start_unix"] < b["end_unix"] and b["start_unix"] < a["end_unix"]
print(f"2 jobs completed; CUDA_VISIBLE_DEVICES {gpus}; ran at the same time: {overlap}; "
      f"wall {[round(r['wall_time_s'], 1) for r in recs]} s; val/acc {[round(r['metrics']['val/acc'], 4) for r in recs]}")
assert len(set(gpus)) == 1 and gpus[0] not in (None, ""), f"the jobs should share one GPU, got {gpus}"
assert overlap, "the two jobs did not hold the GPU at the same time"
EOF

run_step finetune "${limits[4]}" "$PYTHON" -m hybridpool.cli model=mobilenet_v2 data=flowers17 pool=hybrid_channel \
  "${finetune[@]}" logger=csv callbacks=checkpoint trainer.enable_progress_bar=false task_name=gpu_check_finetune
step=finetune_record
"$PYTHON" - "$HYBRIDPOOL_LOG_DIR/gpu_check_finetune/runs" <<'EOF' 2>&1 | tee -a "$out/finetune.txt"
import json, sys
from pathlib import Path
(rec,) = [json.loads(p.read_text()) for p in Path(sys.argv[1]).glob("*/results.json")]
assert rec["status"] == "completed", rec.get("error")
m, t = rec["metrics"], rec.get("timing", {})
print(f"fine-tune completed: {int(m['epochs'])} epochs, val/acc {m['val/acc']:.4f}, test/acc {m.get('test/acc', float('nan')):.4f}, "
      f"fit {t.get('fit_s', float('nan')):.1f} s, wall {rec['wall_time_s']:.1f} s")
EOF

step=targets
"$PYTHON" - "$out/bench_bf16.txt" "$cpu" <<'EOF' 2>&1 | tee "$out/targets.txt"
import re, sys
text, cpu = open(sys.argv[1]).read(), sys.argv[2] == "1"
# the bench's table: "shape (B, C, H, W) ..." then rows "  name  fwd_ms fwd_x f+b_ms f+b_x mem_x"
tables = re.split(r"\nshape (\(\d+, \d+, \d+, \d+\))  \(", text)[1:]
shapes = dict(zip(tables[::2], tables[1::2]))
shape = "(8, 256, 7, 7)" if cpu else "(64, 2048, 7, 7)"
rows = {}
for line in shapes[shape].splitlines():
    parts = line.split()
    if len(parts) == 6 and parts[0] in ("gap", "hybrid_scalar", "hybrid_channel"):
        rows[parts[0]] = [float(v) for v in parts[1:]]
print(f"bfloat16 on {shape}{' (CPU path: the numbers say nothing about a GPU)' if cpu else ''}; limit: forward+backward <= 2x GAP")
for name in ("hybrid_scalar", "hybrid_channel"):
    fwd_ms, fwd_x, fb_ms, fb_x, mem_x = rows[name]
    verdict = "met " if fb_x <= 2.0 else "MISS"
    print(f"  {verdict} hybrid(avg,max,gem,attn) {name.split('_')[1]}: forward+backward {fb_ms:.3f} ms = {fb_x:.2f}x GAP "
          f"({rows['gap'][2]:.3f} ms); forward {fwd_x:.2f}x; peak memory {mem_x:.2f}x the input")
EOF
echo "| targets | ok | |" >> "$out/steps.txt"

{
  echo "# GPU check ($device), $(date -u +%Y-%m-%dT%H:%M:%SZ), $SECONDS s in all"
  echo
  echo "Command: \`$([[ $cpu == 1 ]] && echo 'GPU_CHECK_DEVICE=cpu ')scripts/gpu_check.sh\` at commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo
  echo "| step | result | wall |"
  echo "|---|---|---|"
  cat "$out/steps.txt"
  echo
  echo '```'
  cat "$out/targets.txt"
  grep -h "2 jobs completed\|fine-tune completed" "$out/ray_shared_gpu.txt" "$out/finetune.txt" || true
  echo '```'
} > "$out/summary.md"
cat "$out/summary.md"
echo "gpu_check: done in $SECONDS s; output in $out"
