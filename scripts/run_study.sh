#!/usr/bin/env bash
# The study of paper/: every sweep, in order, then its small records copied into paper/results/.
#
#   scripts/run_study.sh                    # all parts; the wall time of the committed run: paper/results/README.md
#   STUDY_PARTS="fg synth" scripts/run_study.sh     # some parts: fg fg_extra effnet fg_cub synth fashion synth_mix
#   STUDY_DIR=/tmp/study STUDY_WORKERS=2 scripts/run_study.sh
#
# Needs the offline data (HYBRIDPOOL_DATA_ROOT, TORCH_HOME; see ../shared/data/README.md) and the joblib launcher
# (pip install -e '.[joblib]'). Re-running the same command skips the jobs already completed and runs the rest
# again from the start (hybridpool/sweep.py; the study keeps no checkpoints), so an interrupted study is finished by
# running it again. A job that fails is recorded
# as failed and the sweep goes on; the report lists it. Feature caches go to HYBRIDPOOL_CACHE_DIR.
set -uo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
STUDY_DIR="${STUDY_DIR:-outputs/study}"
WORKERS="${STUDY_WORKERS:-2}"
PARTS="${STUDY_PARTS:-fg fg_extra effnet fg_cub synth fashion synth_mix}"
# seeds of every cell; the finished jobs of an earlier run with fewer seeds are skipped
SEEDS="${STUDY_SEEDS:-0,1,2,3,4}"
RESULTS="${STUDY_RESULTS:-paper/results}"
export WANDB_MODE="${WANDB_MODE:-offline}"
mkdir -p "$STUDY_DIR"
LOG="$STUDY_DIR/study.log"

say() { echo "[study $(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }
train() { "$PY" -m hybridpool.cli "$@"; }

# one sweep: sweep NAME OVERRIDES... -> $STUDY_DIR/NAME, jobs on $WORKERS local processes
sweep() {
    local name="$1"; shift
    local t0; t0=$(date +%s)
    say "sweep $name: $*"
    SWEEPS+=("$STUDY_DIR/$name")
    train -m "$@" hydra/launcher=joblib "hydra.launcher.n_jobs=$WORKERS" "hydra.sweep.dir=$STUDY_DIR/$name" \
        >> "$STUDY_DIR/$name.log" 2>&1
    local rc=$?
    say "sweep $name: exit $rc, $(( $(date +%s) - t0 )) s; $(grep -h ' jobs: ' "$STUDY_DIR/$name.log" | tail -n 1)"
}

# compute a frozen backbone's feature cache (train, val and test splits) once, before parallel jobs need it
# (one epoch, nothing kept)
warm() {
    local t0; t0=$(date +%s)
    train "$@" trainer.max_epochs=1 logger=none callbacks=none "hydra.run.dir=$STUDY_DIR/_warm" \
        >> "$STUDY_DIR/warm.log" 2>&1
    say "feature cache for $*: exit $?, $(( $(date +%s) - t0 )) s"
}

FG_POOLS="avg,max,gem,lse,kmax,attn,qattn,hybrid_scalar,hybrid_channel,hybrid_gate,hybrid_concat"
# the single and hybrid pools of the fine-grained block, with and without post-pool BatchNorm
fg_pools() {
    local prefix="$1" data="$2" seeds="$3"; shift 3
    sweep "$prefix-pools" experiment=study_fg "data=$data" "pool=$FG_POOLS" "seed=$seeds" "$@"
    sweep "$prefix-nobn" experiment=study_fg "data=$data" pool=avg,max,gem,hybrid_scalar model.post_bn=false \
        "seed=$seeds" "$@"
}
# the flatten + FC head, GeM with fixed p between GAP (p=1) and max, and the two-branch hybrid trained jointly
# or freeze-and-train
fg_extra() {
    local prefix="$1" data="$2" seeds="$3"; shift 3
    sweep "$prefix-gem-fixed-p" experiment=study_fg "data=$data" pool=gem pool.learn_p=false pool.p=2,4,8 \
        "seed=$seeds" "$@"
    sweep "$prefix-flatten" experiment=study_fg "data=$data" pool=flatten "pool.spatial_size=[7,7]" "seed=$seeds" "$@"
    sweep "$prefix-schedule" experiment=study_fg "data=$data" pool=hybrid_scalar "pool.branches=[avg,max]" \
        pool.init=gap module.pool_schedule=joint,freeze_and_train "seed=$seeds" "$@"
}

SWEEPS=()
T0=$(date +%s)
say "study: parts '$PARTS', $WORKERS workers, into $STUDY_DIR"
for part in $PARTS; do
    case "$part" in
    fg)
        warm experiment=study_fg data=flowers17
        warm experiment=study_fg data=dtd
        fg_pools fg flowers17,dtd "$SEEDS"
        ;;
    fg_extra)
        fg_extra fg flowers17,dtd "$SEEDS"
        ;;
    fg_cub)
        # CUB's training split is 3.2x Flowers-17's (2,613 vs 816 images): 8 epochs
        warm experiment=study_fg data=cub
        sweep fg-cub-pools experiment=study_fg data=cub "pool=$FG_POOLS" trainer.max_epochs=8 "seed=$SEEDS"
        sweep fg-cub-nobn experiment=study_fg data=cub pool=avg,max,gem,hybrid_scalar model.post_bn=false \
            trainer.max_epochs=8 "seed=$SEEDS"
        ;;
    effnet)
        warm experiment=study_fg model=efficientnet_lite0 data=flowers17
        sweep effnet experiment=study_fg model=efficientnet_lite0 data=flowers17 \
            pool=avg,max,gem,kmax,hybrid_scalar "seed=$SEEDS"
        ;;
    synth)
        sweep synth experiment=study_synth data=synth_texture,synth_detail,synth_finegrained \
            pool=avg,max,gem,attn,hybrid_scalar "seed=$SEEDS"
        sweep synth-flatten experiment=study_synth data=synth_texture,synth_detail,synth_finegrained \
            pool=flatten "pool.spatial_size=[8,8]" "seed=$SEEDS"
        ;;
    synth_mix)
        # the other three mixing modes of the hybrid on the classification tasks (about 30 s a job on 2 workers)
        sweep synth-mix experiment=study_synth data=synth_texture,synth_detail,synth_finegrained \
            pool=hybrid_channel,hybrid_gate,hybrid_concat "seed=$SEEDS"
        ;;
    fashion)
        # one epoch over 54,000 images: the most expensive jobs of the study (~100 s each on 2 workers)
        sweep fashion-flatten experiment=study_fashion pool=flatten "pool.spatial_size=[7,7]" "seed=$SEEDS"
        sweep fashion-10pct experiment=study_fashion pool=avg data.train_fraction=0.1 trainer.max_epochs=3 "seed=$SEEDS"
        sweep fashion-10pct-flatten experiment=study_fashion pool=flatten "pool.spatial_size=[7,7]" \
            data.train_fraction=0.1 trainer.max_epochs=3 "seed=$SEEDS"
        sweep fashion experiment=study_fashion pool=avg,max,gem,hybrid_scalar "seed=$SEEDS"
        ;;
    *) say "unknown part '$part' (known: fg fg_extra effnet fg_cub synth fashion synth_mix)"; exit 2 ;;
    esac
done
say "study: $(( $(date +%s) - T0 )) s wall in all"
"$PY" scripts/collect_results.py "${SWEEPS[@]}" "$RESULTS" | tail -n 1 | tee -a "$LOG"
