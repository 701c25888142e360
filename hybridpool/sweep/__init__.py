"""Sweeps that survive failures and restarts: a stable sweep folder, skip/resume per job, a summary.

A multirun (``hybridpool-train -m pool=avg,gem seed=0,1``) writes into
``<log_dir>/<task_name>/multirun/<sweep name>/<job num>/``. The sweep name comes from the command line (the
task overrides, in order: ``pool-avg+gem_seed-0+1-<hash of all overrides>``), not from the clock, so running the
same command again lands in the same folder, where every job first looks for itself:

- **skip**: a job whose resolved config and seed (:func:`config_hash`, independent of output folders and
  timestamps) already has a ``completed`` record in the sweep folder is not run again (no new W&B run either);
- **resume**: an unfinished one (``failed``, ``interrupted``, or ``running`` but killed) with
  ``checkpoints/last.ckpt`` continues from it, in its folder, under the same W&B run id;
- **run**: anything else runs (again) in its folder.

A job that raises is recorded as ``failed`` (status and traceback in ``results.json`` and in its W&B run) and
the sweep goes on. :class:`SweepCallback` (a Hydra callback, see ``conf/hydra/default.yaml``) writes
``sweep.json`` (the command, overrides, launcher, expected jobs, one entry per invocation) at the start and
prints the summary (done, skipped, failed, ... and where each job lives) at the end, also written to
``summary.json``. ``hybridpool-sweep-status <sweep dir>`` prints the same summary at any time.

Rooms: :mod:`.naming` (the folder name), :mod:`.plan` (skip/resume/run, locks), :mod:`.job` (one job of a
multirun, handed to :func:`hybridpool.run.train` with a plain :class:`~hybridpool.run.Placement`),
:mod:`.summary` (status), :mod:`.callback` (the Hydra callback), :mod:`.ray_workers` (Ray's long-lived workers),
:mod:`.slurm` (SLURM: submit only the jobs left to run, know a job's end without accounting).
The sweep calls the run; the run never imports the sweep. Importing this package imports no torch or
Lightning: the Hydra callback and the status command stay fast.
"""


from hybridpool.records import config_hash, record_hash
from hybridpool.sweep.callback import SweepCallback
from hybridpool.sweep.naming import register_resolver, sweep_name
from hybridpool.sweep.plan import JobPlan, SweepJob, current_job, iter_records, job_lock, plan_job
from hybridpool.sweep.summary import (
    MANIFEST_FILE,
    SUMMARY_FILE,
    JobState,
    SweepSummary,
    format_summary,
    last_summary,
    status_main,
    summarize,
)

__all__ = [
    "MANIFEST_FILE",
    "SUMMARY_FILE",
    "JobPlan",
    "JobState",
    "SweepCallback",
    "SweepJob",
    "SweepSummary",
    "config_hash",
    "current_job",
    "format_summary",
    "iter_records",
    "job_lock",
    "last_summary",
    "plan_job",
    "record_hash",
    "register_resolver",
    "status_main",
    "summarize",
    "sweep_name",
]
