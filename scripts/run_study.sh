#!/usr/bin/env bash
# The study of paper/: every sweep, in order, then its small records copied into paper/results/.
#
#   scripts/run_study.sh                    # all parts; the wall time of the committed run: paper/results/README.md
#   STUDY_PARTS="fg_cub fg" scripts/run_study.sh    # some parts: fg_cub fg_cub_arms fg fg_extra effnet synth
#                                                   # synth_mix fashion (fashion_overfit: its 10% sweeps alone)
#                                                   # fg_cub_extra (fg_extra's arms on CUB), finetune (not in
#                                                   # the default list: it trains the backbone)
#   STUDY_DIR=/tmp/study STUDY_WORKERS=2 scripts/run_study.sh
#
# The frozen-backbone parts (fg*, effnet) train many heads per pass (hydra/launcher=heads: one process per sweep
# trains all its pool x seed x split runs over the cached feature maps, each still its own run); the parts that train
# a backbone (synth*, fashion) run one Lightning job per run on the joblib launcher (pip install -e '.[joblib]').
# Needs the offline data (HYBRIDPOOL_DATA_ROOT, TORCH_HOME; see ../shared/data/README.md). Re-running the same
# command skips the jobs already completed and resumes the interrupted ones (hybridpool/sweep/), so an interrupted
# study is finished by running it again. A job that fails is recorded as failed and the sweep goes on; the report
# lists it. Feature caches go to HYBRIDPOOL_CACHE_DIR.
set -uo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
STUDY_DIR="${STUDY_DIR:-outputs/study}"
WORKERS="${STUDY_WORKERS:-2}"
PARTS="${STUDY_PARTS:-fg_cub fg_cub_arms fg fg_extra effnet synth synth_mix fashion}"
KNOWN_PARTS="fg_cub fg_cub_arms fg fg_extra fg_cub_extra effnet synth synth_mix fashion fashion_overfit finetune"
# seeds of every cell; the finished jobs of an earlier run with fewer seeds are skipped
SEEDS="${STUDY_SEEDS:-0,1,2,3,4,5,6,7,8,9}"
# data splits of Flowers-17 and DTD (stratified, seeded; CUB has its official train/test split)
SPLITS="${STUDY_SPLITS:-0,1,2}"
RESULTS="${STUDY_RESULTS:-paper/results}"
export WANDB_MODE="${WANDB_MODE:-offline}"
mkdir -p "$STUDY_DIR"
LOG="$STUDY_DIR/study.log"

say() { echo "[study $(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }
train() { "$PY" -m hybridpool.cli "$@"; }

# one sweep: sweep NAME OVERRIDES... -> $STUDY_DIR/NAME, jobs on $WORKERS local processes (joblib);
# heads NAME OVERRIDES... -> the same with many heads per pass (one process)
run_sweep() {
    local name="$1"; shift
    local t0; t0=$(date +%s)
    say "sweep $name: $*"
    SWEEPS+=("$STUDY_DIR/$name")
    train -m "$@" "hydra.sweep.dir=$STUDY_DIR/$name" >> "$STUDY_DIR/$name.log" 2>&1
    local rc=$?
    say "sweep $name: exit $rc, $(( $(date +%s) - t0 )) s; $(grep -h ' jobs: ' "$STUDY_DIR/$name.log" | tail -n 1)"
}
sweep() { local name="$1"; shift; run_sweep "$name" "$@" hydra/launcher=joblib "hydra.launcher.n_jobs=$WORKERS"; }
# (on HEADS_JOBS worker processes, default $WORKERS; the groups are split by seed)
heads() { local name="$1"; shift; run_sweep "$name" "$@" hydra/launcher=heads "hydra.launcher.n_jobs=${HEADS_JOBS:-$WORKERS}"; }

# compute a frozen backbone's feature cache (train, val and test splits) once, before parallel jobs need it
# (one epoch, nothing kept)
warm() {
    local t0; t0=$(date +%s)
    train "$@" trainer.max_epochs=1 logger=none callbacks=none "hydra.run.dir=$STUDY_DIR/_warm" \
        >> "$STUDY_DIR/warm.log" 2>&1
    say "feature cache for $*: exit $?, $(( $(date +%s) - t0 )) s"
}

FG_POOLS="avg,max,gem,lse,kmax,attn,qattn,hybrid_scalar,hybrid_channel,hybrid_gate,hybrid_concat"
# the fine-grained block on one data set: the single and hybrid pools and covariance pooling, seeds x splits (the
# hybrid's design arms run on CUB: fg_cub_arms)
fg_block() {
    local data="$1"; shift
    heads "fg-$data-pools" experiment=study_fg "data=$data" "pool=$FG_POOLS,cov" "seed=$SEEDS" "$@"
}
# the flatten + FC head, GeM with fixed p between GAP (p=1) and max, and the two-branch hybrid trained jointly
# or freeze-and-train (not groupable: one Lightning job each)
fg_extra() {
    local prefix="$1" data="$2" seeds="$3"; shift 3
    heads "$prefix-gem-fixed-p" experiment=study_fg "data=$data" pool=gem pool.learn_p=false pool.p=2,4,8 \
        "seed=$seeds" "$@"
    heads "$prefix-flatten" experiment=study_fg "data=$data" pool=flatten "pool.spatial_size=[7,7]" "seed=$seeds" "$@"
    heads "$prefix-nobn" experiment=study_fg "data=$data" pool=avg,max,gem,hybrid_scalar model.post_bn=false \
        "seed=$seeds" "$@"
    sweep "$prefix-schedule" experiment=study_fg "data=$data" pool=hybrid_scalar "pool.branches=[avg,max]" \
        pool.init=gap module.pool_schedule=joint,freeze_and_train "seed=$seeds" "$@"
}

# the overfitting claim (GAP against flatten + FC): 10% of the training images, trained 15 epochs (the best
# validation epoch is tested), and the tested model's accuracy on its training images in eval mode
# (callbacks=study_overfit: train_eval/acc)
fashion_overfit() {
    sweep fashion-10pct-long experiment=study_fashion pool=avg data.train_fraction=0.1 trainer.max_epochs=15 \
        callbacks=study_overfit "seed=$SEEDS"
    sweep fashion-10pct-long-flatten experiment=study_fashion pool=flatten "pool.spatial_size=[7,7]" \
        data.train_fraction=0.1 trainer.max_epochs=15 callbacks=study_overfit "seed=$SEEDS"
}

SWEEPS=()
T0=$(date +%s)
say "study: parts '$PARTS', $WORKERS workers, into $STUDY_DIR"
for part in $PARTS; do
    case "$part" in
    fg_cub)
        # CUB's training split is 3.2x Flowers-17's (2,613 vs 816 images): 8 epochs; its official test split
        warm experiment=study_fg data=cub
        heads fg-cub-pools experiment=study_fg data=cub "pool=$FG_POOLS" trainer.max_epochs=8 "seed=$SEEDS"
        ;;
    fg_cub_arms)
        # covariance pooling and the hybrid's design arms (per-branch normalisation, init=gap, an entropy penalty on
        # the mixing weights, freeze-and-train); the attention diagnosis: the rules before the fix
        # (the pools' weights at pool_lr_mult; qattn's dot-product logits)
        heads fg-cub-cov experiment=study_fg data=cub pool=cov trainer.max_epochs=8 "seed=$SEEDS"
        heads fg-cub-hybrid-bn experiment=study_fg data=cub pool=hybrid_scalar +pool.branch_norm=true \
            trainer.max_epochs=8 "seed=$SEEDS"
        heads fg-cub-hybrid-gapinit experiment=study_fg data=cub pool=hybrid_scalar pool.init=gap \
            trainer.max_epochs=8 "seed=$SEEDS"
        heads fg-cub-hybrid-entropy experiment=study_fg data=cub pool=hybrid_scalar \
            +module.mix_entropy_weight=0.1,1.0 trainer.max_epochs=8 "seed=$SEEDS"
        # freeze-and-train (one Lightning job each): GAP + head first, then the mixing weights train too
        sweep fg-cub-hybrid-freeze experiment=study_fg data=cub pool=hybrid_scalar pool.init=gap \
            module.pool_schedule=freeze_and_train trainer.max_epochs=8 "seed=$SEEDS"
        heads fg-cub-attn-before experiment=study_fg data=cub pool=attn optim.pool_weights=pool \
            trainer.max_epochs=8 "seed=$SEEDS"
        heads fg-cub-qattn-dot experiment=study_fg data=cub pool=qattn pool.similarity=dot pool.temperature=1.0 \
            optim.pool_weights=pool,head trainer.max_epochs=8 "seed=$SEEDS"
        ;;
    fg)
        # Flowers-17 and DTD side by side (one process each), every split
        for split in ${SPLITS//,/ }; do
            warm experiment=study_fg data=flowers17 "data.split_seed=$split"
            warm experiment=study_fg data=dtd "data.split_seed=$split"
        done
        HEADS_JOBS=1 OMP_NUM_THREADS=1 fg_block flowers17 "data.split_seed=$SPLITS" &
        HEADS_JOBS=1 OMP_NUM_THREADS=1 fg_block dtd "data.split_seed=$SPLITS" &
        wait
        for d in flowers17 dtd; do  # the background blocks' sweeps, for the collection below
            SWEEPS+=("$STUDY_DIR/fg-$d-pools")
        done
        ;;
    fg_extra)
        fg_extra fg flowers17,dtd "$SEEDS" "data.split_seed=$SPLITS"
        ;;
    fg_cub_extra)  # the same arms on CUB (8 epochs, its official split)
        fg_extra fg-cub cub "$SEEDS" trainer.max_epochs=8
        ;;
    effnet)
        warm experiment=study_fg model=efficientnet_lite0 data=flowers17
        heads effnet experiment=study_fg model=efficientnet_lite0 data=flowers17 \
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
        fashion_overfit
        sweep fashion experiment=study_fashion pool=avg,max,gem,hybrid_scalar "seed=$SEEDS"
        ;;
    finetune)
        # MobileNetV2 fine-tuned end to end at 160 px on Flowers-17: the frozen-feature ranking, with a trained
        # backbone (one Lightning job each; 5 seeds)
        sweep finetune-flowers17 experiment=study_finetune pool=avg,max,gem,hybrid_scalar seed=0,1,2,3,4
        ;;
    fashion_overfit)  # the 10% sweeps of the fashion part alone
        fashion_overfit
        ;;
    *) say "unknown part '$part' (known: $KNOWN_PARTS)"; exit 2 ;;
    esac
done
say "study: $(( $(date +%s) - T0 )) s wall in all"
"$PY" scripts/collect_results.py "${SWEEPS[@]}" "$RESULTS" | tail -n 1 | tee -a "$LOG"
