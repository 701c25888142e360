"""The overrides of a tiny, fast training run, shared by conftest.py and the sweep tests (a module of its own:
``conftest`` is ambiguous across test folders)."""

#: a tiny, fast run: 16 px synthetic images, a 2-stage CNN, one epoch, no loggers or callbacks
TINY = [
    "data=synth_detail",
    "data.num_train=64",
    "data.num_val=32",
    "data.num_test=32",
    "data.batch_size=32",
    "data.image_size=16",
    "model.backbone.widths=[8,16]",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.num_sanity_val_steps=0",
    "trainer.log_every_n_steps=1",
    "logger=none",
    "callbacks=none",
]
