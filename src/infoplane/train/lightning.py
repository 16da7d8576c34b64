"""A PyTorch Lightning callback that records the activation store while ``Trainer.fit`` runs.

Needs ``lightning`` (``pip install lightning``; not a dependency of infoplane)::

    from infoplane.train.lightning import InfoplaneCallback

    callback = InfoplaneCallback("runs/mine/activations.zarr", layers=["block1", "head"],
                                 probes={"train": (x_tr, y_tr), "test": (x_te, y_te)},
                                 steps=[0, 50, 100, 200])
    lightning.Trainer(max_steps=200, callbacks=[callback]).fit(module, loader)

It wraps a :class:`~infoplane.train.recorder.Recorder` on the LightningModule: the store is laid
out when fitting starts (step 0 captured) and every ``trainer.global_step`` on the schedule is
captured after its batch. Lightning's own checkpoints resume the training; the recorder's
checkpoint is not used (``fit(ckpt_path=...)`` reopens the store and recaptures the steps from
there on, which region writes make idempotent).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

try:
    import lightning.pytorch as pl
except ImportError as exc:  # an optional extra
    raise ImportError(
        "infoplane.train.lightning needs PyTorch Lightning: pip install lightning"
    ) from exc

from infoplane.train.recorder import Recorder


class InfoplaneCallback(pl.Callback):
    """Records ``layers`` of the LightningModule on ``probes`` at ``steps`` (global steps)."""

    def __init__(
        self,
        store: str,
        *,
        layers: Sequence[str],
        probes: Mapping[str, tuple[Any, Any]],
        steps: Sequence[int],
        **options: Any,
    ) -> None:
        self.store, self.layers, self.probes, self.steps = store, layers, probes, steps
        self.options = options
        self.recorder: Recorder | None = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        step = int(trainer.global_step)
        self.recorder = Recorder(
            self.store, pl_module, layers=self.layers, probes=self.probes, steps=self.steps,
            **{**self.options, "restart": step == 0},
        )  # fmt: skip
        if step == 0:
            self.recorder.open()  # a new store, step 0 captured
        else:  # resumed by Lightning from its checkpoint
            self.recorder.reopen(step)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        if self.recorder is not None:
            self.recorder.advance_to(int(trainer.global_step), checkpoint=False)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self.recorder is not None:
            self.recorder.close()
