"""Time left of long work: the formatter, the training callback (``TimeLeft``) and the feature-cache pass.

Every clock here is a fake one (``monotonic()`` and ``time()``) moved by the test: no sleeping, no timings.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from hybridpool.data import features
from hybridpool.data.features import FeatureCache
from hybridpool.data.progress import Progress, eta_text, format_duration, format_eta
from hybridpool.run.callbacks import TimeLeft

#: 2023-11-14 22:13:20 UTC
T0 = 1_700_000_000.0


class FakeClock:
    """``monotonic()`` starts at 0, ``time()`` at ``T0``; ``advance(s)`` moves both."""

    def __init__(self) -> None:
        self.t = 0.0

    def monotonic(self) -> float:
        return self.t

    def time(self) -> float:
        return T0 + self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def _lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[hybridpool]")]


# ----------------------------------------------------------------------------------------- the formatter
@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s"), (0.4, "0 s"), (-3, "0 s"), (41, "41 s"), (59.6, "1 min"), (120, "2 min"), (130, "2 min 10 s"),
     (3599, "59 min 59 s"), (3600, "1 h 00 min"), (3725, "1 h 02 min"), (90061, "25 h 01 min")],
)
def test_durations_read_as_people_say_them(seconds, text) -> None:
    assert format_duration(seconds) == text


def test_the_eta_is_a_utc_clock_time_with_the_date_when_not_today() -> None:
    assert format_eta(T0, now_unix=T0) == "22:13 UTC"
    assert format_eta(T0 + 3 * 3600, now_unix=T0) == "2023-11-15 01:13 UTC"


def test_the_time_left_extrapolates_the_share_done() -> None:
    # 3 of 12 epochs in 40 s: 120 s left, at 22:15:20 after now (22:13:20)
    assert eta_text(40.0, 3 / 12, T0) == "40 s elapsed, about 2 min left (ETA 22:15 UTC)"
    assert eta_text(41.0, 0.25, T0) == "41 s elapsed, about 2 min 3 s left (ETA 22:15 UTC)"
    assert eta_text(41.0, 0.0, T0) == "41 s elapsed"  # nothing done yet: no estimate
    assert eta_text(41.0, 1.0, T0) == "41 s elapsed, about 0 s left (ETA 22:13 UTC)"


def test_progress_prints_every_interval_then_how_long_it_took() -> None:
    clock, out = FakeClock(), []
    p = Progress("caching train features", 256, unit="images", every_s=30, clock=clock, emit=out.append)
    for _ in range(8):  # 8 batches of 32 images, 10 s each
        clock.advance(10)
        p.advance(32)
    p.finish()
    assert out == [
        "caching train features: 96/256 images, 30 s elapsed, about 50 s left (ETA 22:14 UTC)",
        "caching train features: 192/256 images, 1 min elapsed, about 20 s left (ETA 22:14 UTC)",
        "caching train features: 256/256 images in 1 min 20 s",
    ]


def test_a_short_pass_prints_nothing() -> None:
    clock, out = FakeClock(), []
    p = Progress("caching val features", 64, unit="images", every_s=30, clock=clock, emit=out.append)
    for _ in range(2):
        clock.advance(12)
        p.advance(32)
    p.finish()
    assert out == []


# ----------------------------------------------------------------------------------------- the training callback
def _trainer(**kw) -> SimpleNamespace:
    args = {"is_global_zero": True, "fast_dev_run": False, "progress_bar_callback": None, "current_epoch": 0,
            "global_step": 0, "max_epochs": 12, "max_steps": -1, "num_training_batches": 10}
    return SimpleNamespace(**{**args, **kw})


def _fit(cb: TimeLeft, trainer: SimpleNamespace, clock: FakeClock, batch_s: float) -> None:
    """Drive ``cb``'s hooks as Lightning would: ``max_epochs`` epochs of ``num_training_batches`` batches."""
    cb.on_train_start(trainer, None)
    for epoch in range(trainer.max_epochs):
        trainer.current_epoch = epoch
        for b in range(trainer.num_training_batches):
            clock.advance(batch_s)
            trainer.global_step += 1
            cb.on_train_batch_end(trainer, None, None, None, b)
        cb.on_train_epoch_end(trainer, None)


def test_a_long_run_prints_the_time_left_after_epochs(capsys) -> None:
    clock = FakeClock()
    cb = TimeLeft(every_s=30, epoch_every_s=10, min_run_s=20, clock=clock)
    _fit(cb, _trainer(max_epochs=12), clock, batch_s=1.0)  # 10 s epochs, 2 min in all
    lines = _lines(capsys)
    assert lines[:3] == [
        "[hybridpool] epoch 1/12: 10 s elapsed, about 1 min 50 s left (ETA 22:15 UTC)",
        "[hybridpool] epoch 2/12: 20 s elapsed, about 1 min 40 s left (ETA 22:15 UTC)",
        "[hybridpool] epoch 3/12: 30 s elapsed, about 1 min 30 s left (ETA 22:15 UTC)",
    ]
    assert len(lines) == 11 and lines[-1].startswith("[hybridpool] epoch 11/12: 1 min 50 s elapsed, about 10 s left")
    assert cb.lines == [ln.removeprefix("[hybridpool] ") for ln in lines]


def test_many_short_epochs_print_a_line_every_epoch_every_s(capsys) -> None:
    clock = FakeClock()
    cb = TimeLeft(every_s=30, epoch_every_s=10, min_run_s=20, clock=clock)
    _fit(cb, _trainer(max_epochs=100, num_training_batches=2), clock, batch_s=0.25)  # 0.5 s epochs, 50 s
    lines = _lines(capsys)
    assert [ln.split(":")[0] for ln in lines] == [f"[hybridpool] epoch {e}/100" for e in (1, 21, 41, 61, 81)]


def test_a_long_epoch_prints_every_every_s(capsys) -> None:
    clock = FakeClock()
    cb = TimeLeft(every_s=30, clock=clock)
    _fit(cb, _trainer(max_epochs=1, num_training_batches=100), clock, batch_s=1.0)  # one 100-s epoch
    assert _lines(capsys) == [
        "[hybridpool] epoch 1/1, batch 30/100: 30 s elapsed, about 1 min 10 s left (ETA 22:15 UTC)",
        "[hybridpool] epoch 1/1, batch 60/100: 1 min elapsed, about 40 s left (ETA 22:15 UTC)",
        "[hybridpool] epoch 1/1, batch 90/100: 1 min 30 s elapsed, about 10 s left (ETA 22:15 UTC)",
    ]  # nothing after the last epoch: the run's report follows


def test_max_steps_ends_the_run_first(capsys) -> None:
    clock = FakeClock()
    cb = TimeLeft(clock=clock)
    _fit(cb, _trainer(max_epochs=4, max_steps=20, num_training_batches=10), clock, batch_s=2.0)
    # after epoch 1 (20 s), 10 of 20 steps are done: 20 s left, not the 60 s that 4 epochs would take
    assert _lines(capsys)[0] == "[hybridpool] epoch 1/4: 20 s elapsed, about 20 s left (ETA 22:14 UTC)"


@pytest.mark.parametrize(
    ("trainer", "batch_s"),
    [
        (_trainer(max_epochs=3), 0.5),  # a 15-s run: quiet
        (_trainer(is_global_zero=False), 1.0),  # DDP rank 1 of a long run
        (_trainer(progress_bar_callback=object()), 1.0),  # a progress bar shows its own estimate
        (_trainer(fast_dev_run=True), 1.0),
    ],
    ids=["short-run", "rank-1", "progress-bar", "fast-dev-run"],
)
def test_quiet_for_short_runs_other_ranks_and_with_a_progress_bar(capsys, trainer, batch_s) -> None:
    clock = FakeClock()
    cb = TimeLeft(clock=clock)
    _fit(cb, trainer, clock, batch_s=batch_s)
    assert _lines(capsys) == [] and cb.lines == []


def test_a_resumed_run_counts_from_its_resumption(capsys) -> None:
    clock = FakeClock()
    cb = TimeLeft(clock=clock)
    trainer = _trainer(max_epochs=12, current_epoch=8, global_step=80)
    cb.on_train_start(trainer, None)
    clock.advance(10)
    cb.on_train_epoch_end(trainer, None)  # epoch 9 of 12 done, the first of 4 since the resumption
    assert _lines(capsys) == ["[hybridpool] epoch 9/12: 10 s elapsed, about 30 s left (ETA 22:14 UTC)"]


def test_in_a_real_lightning_fit(capsys) -> None:
    """The hooks fire where the callback expects them: a fit whose batches each take 1 s of fake time."""
    import pytorch_lightning as pl

    clock = FakeClock()

    class Model(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(4, 2)

        def training_step(self, batch, batch_idx):
            clock.advance(1.0)
            x, y = batch
            return nn.functional.cross_entropy(self.layer(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = TensorDataset(torch.randn(40, 4), torch.randint(0, 2, (40,)))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    cb = TimeLeft(clock=clock)
    trainer = pl.Trainer(max_epochs=3, callbacks=[cb], enable_progress_bar=False, enable_model_summary=False,
                         logger=False, enable_checkpointing=False, accelerator="cpu", devices=1)
    trainer.fit(Model(), loader)
    assert cb.lines == [
        "epoch 1/3: 10 s elapsed, about 20 s left (ETA 22:13 UTC)",
        "epoch 2/3: 20 s elapsed, about 10 s left (ETA 22:13 UTC)",
    ]


def test_every_run_gets_one_time_left_callback(make_cfg) -> None:
    from hybridpool.run.build import build_callbacks

    assert sum(isinstance(c, TimeLeft) for c in build_callbacks(make_cfg(), [], [])) == 1
    own = make_cfg(
        ["+callbacks.time_left._target_=hybridpool.run.callbacks.TimeLeft", "+callbacks.time_left.every_s=5"]
    )
    mine = [c for c in build_callbacks(own, [], []) if isinstance(c, TimeLeft)]
    assert len(mine) == 1 and mine[0].every_s == 5.0


# ----------------------------------------------------------------------------------------- the feature cache pass
class _SlowBackbone(nn.Module):
    """A 1x1 conv whose every batch takes 20 s of the fake clock."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.clock = clock

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.clock.advance(20.0)
        return self.conv(x)


def test_the_feature_cache_pass_prints_progress_with_the_time_left(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(features, "_stderr_is_terminal", lambda: False)  # no live bar, as in logs and sweeps
    clock = FakeClock()
    torch.manual_seed(0)
    dataset = TensorDataset(torch.randn(8, 3, 5, 5), torch.arange(8) % 2)
    cache, backbone = FeatureCache(tmp_path, batch_size=2, clock=clock), _SlowBackbone(clock)
    cached = cache.get(backbone, dataset, {"name": "fake"}, "train")
    assert len(cached) == 8 and [e.kind for e in cache.events] == ["miss"]
    assert _lines(capsys) == [
        "[hybridpool] caching train features: 4/8 images, 40 s elapsed, about 40 s left (ETA 22:14 UTC)",
        "[hybridpool] caching train features: 8/8 images in 1 min 20 s",
    ]
    # a hit reads the entry back: no pass, no lines
    again = FeatureCache(tmp_path, batch_size=2, clock=clock)
    again.get(backbone, dataset, {"name": "fake"}, "train")
    assert [e.kind for e in again.events] == ["hit"] and _lines(capsys) == []


def test_a_short_feature_pass_prints_nothing(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(features, "_stderr_is_terminal", lambda: False)
    clock = FakeClock()
    dataset = TensorDataset(torch.randn(4, 3, 5, 5), torch.arange(4) % 2)
    FeatureCache(tmp_path, batch_size=2, clock=clock, progress_every_s=60).get(
        _SlowBackbone(clock), dataset, {"name": "fake"}, "val"
    )
    assert _lines(capsys) == []
