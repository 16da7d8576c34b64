"""Record an activation store from any training loop: :class:`Recorder`.

::

    from infoplane.train.recorder import Recorder

    with Recorder("runs/mine/activations.zarr", model, layers=["block1", "block2", "head"],
                  probes={"train": (x_train[:100], y_train[:100]), "test": (x_test, y_test)},
                  steps=[0, 10, 20, 50, 100], optimizer=optimizer) as rec:
        for step in range(rec.step, 100):       # 0, or where a killed run left off
            ...                                  # one optimizer update of your loop
            rec.update()                         # captures when the schedule says so

The recorder lays out the store once (the schedule is fixed up front), captures step 0 when it
starts fresh, and after every update that reaches a scheduled step captures both probes and
writes a checkpoint beside the store (``<store>.checkpoint.pt``): the model's and the optimizer's
state, torch's random state (and that of ``state`` objects: LR schedulers, generators, your own
loader with ``state_dict``/``load_state_dict``). Started again after a kill, it reopens the store,
restores those states and sets :attr:`Recorder.step` to the last checkpoint, so the loop goes on
from there and, on the CPU with a deterministic loop, writes the same store bit for bit as an
uninterrupted run. A loop's data order must depend only on the step (or on the restored random
state) for that to hold. ``layers`` takes what ``capture.layers`` takes (names, globs,
``type:ClassName``, output selectors; see :mod:`infoplane.train.capture`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from infoplane.errors import ConfigError, StoreError
from infoplane.io.files import canonical_json
from infoplane.io.store import SPLITS, StoreReader, create_store, open_writer

RECORDER_FORMAT = 1


class Recorder:
    """Writes an activation store while your training loop runs (module docstring).

    Parameters
    ----------
    store
        Path of the activation store (``.../activations.zarr``).
    model
        The ``torch.nn.Module`` being trained.
    layers
        Layers to record, input side first (module names, globs, ``type:ClassName``).
    probes
        ``{"train": (x, y), "test": (x, y)}``: the fixed probe inputs and integer labels.
    steps
        The update counts at which to capture (0 = before training), increasing.
    iterations_per_epoch
        Updates per epoch, for the store's ``epoch`` coordinate (default 1: epochs = steps).
    optimizer
        Saved and restored with the model in checkpoints (recommended).
    state
        More objects with ``state_dict()``/``load_state_dict()`` (or a torch ``Generator``) to
        checkpoint, by name.
    softmax
        Also record the softmax of the model's output as layer ``softmax``.
    dtype, batch_size
        Storage type of the activations; forward batch of a capture (None: the whole probe).
    attrs
        Provenance attributes of the store (``experiment``, ``run``, ``seed``, ``model``,
        ``dataset``, ``config``, ``device``); by default the run and experiment are the names
        of the store's folder and the one above it, the model its class name.
    restart
        Ignore a checkpoint and start a new store.
    """

    def __init__(
        self,
        store: str | os.PathLike,
        model: Any,
        *,
        layers: Sequence[str],
        probes: Mapping[str, tuple[Any, Any]],
        steps: Sequence[int],
        iterations_per_epoch: int = 1,
        optimizer: Any = None,
        state: Mapping[str, Any] | None = None,
        softmax: bool = True,
        dtype: str = "float32",
        batch_size: int | None = None,
        attrs: Mapping[str, Any] | None = None,
        restart: bool = False,
    ) -> None:
        from infoplane.train.capture import select_layers

        self.path = Path(store)
        self.checkpoint_path = self.path.with_name(self.path.name + ".checkpoint.pt")
        self.model = model
        self.layers = select_layers(model, list(layers))
        if set(probes) != set(SPLITS):
            raise ConfigError(f"probes must have the splits {SPLITS}, got {sorted(probes)}")
        self.probes = {
            s: (np.asarray(_numpy(x)), np.asarray(_numpy(y))) for s, (x, y) in probes.items()
        }
        self.steps = np.asarray(sorted(int(s) for s in steps), dtype=np.int64)
        if iterations_per_epoch < 1:
            raise ConfigError(f"iterations_per_epoch must be >= 1, got {iterations_per_epoch}")
        self.iterations_per_epoch = int(iterations_per_epoch)
        self.optimizer = optimizer
        self.state = dict(state or {})
        self.softmax = softmax
        self.dtype = dtype
        self.batch_size = batch_size
        self.attrs = dict(attrs or {})
        self.restart = restart
        self.step = 0
        self.resumed_from: int | None = None
        self._writer = None
        self._scheduled = set(self.steps.tolist())

    # -- the loop's side ------------------------------------------------------------------

    def __enter__(self) -> Recorder:
        self.open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def open(self) -> Recorder:
        """Create the store (capturing step 0) or resume from the checkpoint beside it."""
        state = None if self.restart else self._load_checkpoint()
        if state is None:
            self.checkpoint_path.unlink(missing_ok=True)
            self._writer = self._create()
            self.step = 0
            if 0 in self._scheduled:
                self._capture(0)
        else:
            self._writer = open_writer(self.path)
            if not np.array_equal(np.asarray(self._writer.steps), self.steps):
                raise StoreError(f"store {self.path} has another schedule; pass restart=True")
            self._restore(state)
            self.step = self.resumed_from = int(state["step"])
        return self

    def update(self, n: int = 1) -> bool:
        """``n`` optimizer updates are done; capture (and checkpoint) if a scheduled step is
        reached. Returns whether it captured."""
        return self.advance_to(self.step + int(n))

    def advance_to(self, step: int, *, checkpoint: bool = True) -> bool:
        """Training has reached ``step`` updates; capture if it is scheduled (and not the step
        already recorded), then checkpoint unless ``checkpoint=False`` (for loops that keep
        their own checkpoints). Returns whether it captured."""
        if self._writer is None:
            raise StoreError("the recorder is not open; use it in a `with` block or call open()")
        step = int(step)
        captured = step != self.step and step in self._scheduled
        self.step = step
        if captured:
            self._capture(step)
            if checkpoint:
                self.save_checkpoint()
        return captured

    def reopen(self, step: int) -> Recorder:
        """Open the existing store at ``step`` without restoring any state (the training loop
        restored its own); the steps after ``step`` are captured again as training reaches
        them."""
        self._writer = open_writer(self.path)
        if not np.array_equal(np.asarray(self._writer.steps), self.steps):
            raise StoreError(f"store {self.path} has another schedule; start a new store")
        self.step = int(step)
        return self

    def close(self) -> None:
        """Nothing is buffered: every capture is on disk when :meth:`update` returns."""
        self._writer = None

    @property
    def done(self) -> bool:
        """Whether the last scheduled step has been captured."""
        return bool(self.steps.size) and self.step >= int(self.steps[-1])

    # -- store and checkpoint -------------------------------------------------------------

    def _record(self, x: np.ndarray) -> dict[str, np.ndarray]:
        from infoplane.train.capture import capture_activations

        return capture_activations(
            self.model, x, self.layers, softmax=self.softmax, batch_size=self.batch_size
        )

    def _create(self):
        sample = self._record(self.probes["train"][0][:2])
        return create_store(
            self.path,
            steps=self.steps,
            epochs=self.steps / self.iterations_per_epoch,
            n_samples={split: len(self.probes[split][1]) for split in SPLITS},
            input_shape=tuple(self.probes["train"][0].shape[1:]),
            layer_shapes={name: tuple(a.shape[1:]) for name, a in sample.items()},
            attrs={**self._default_attrs(), **self.attrs},
            dtype=self.dtype,
            overwrite=True,
        )

    def _default_attrs(self) -> dict[str, Any]:
        """Provenance the caller did not give: names from the path, the model's class."""
        from infoplane.train.capture import _model_device_dtype

        return {
            "experiment": self.path.parent.parent.name or "recorded",
            "run": self.path.parent.name or "run",
            "seed": None,
            "model": type(self.model).__name__,
            "dataset": "probes",
            "config": {"layers": self.layers, "steps": self.steps.tolist()},
            "device": _model_device_dtype(self.model)[0].type,
        }

    def _capture(self, step: int) -> None:
        for split in SPLITS:
            x, y = self.probes[split]
            self._writer.write(
                split, step, index=np.arange(len(y)), x=x, y=y, activations=self._record(x)
            )

    def _key(self) -> str:
        probes = {s: [list(x.shape), float(np.asarray(x, np.float64).sum())] for s, (x, _) in
                  self.probes.items()}  # fmt: skip
        return canonical_json(
            {"layers": self.layers, "steps": self.steps.tolist(), "probes": probes}
        )

    def save_checkpoint(self) -> None:
        """Write the checkpoint now (done after every capture)."""
        import torch

        from infoplane.train.training import save_checkpoint

        save_checkpoint(
            self.checkpoint_path,
            {
                "format": RECORDER_FORMAT,
                "key": self._key(),
                "step": self.step,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict() if self.optimizer is not None else {},
                "state": {name: _state_of(obj) for name, obj in self.state.items()},
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
            },
        )

    def _load_checkpoint(self) -> dict[str, Any] | None:
        import torch

        if not (self.checkpoint_path.exists() and self.path.exists()):
            return None
        try:
            StoreReader(self.path)
            state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        except Exception:  # an unreadable store or checkpoint: start over
            return None
        if state.get("format") != RECORDER_FORMAT or state.get("key") != self._key():
            return None
        return state

    def _restore(self, state: Mapping[str, Any]) -> None:
        import torch

        self.model.load_state_dict(state["model"])
        if self.optimizer is not None and state["optimizer"]:
            self.optimizer.load_state_dict(state["optimizer"])
        for name, obj in self.state.items():
            if name in state["state"]:
                _load_state(obj, state["state"][name])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])


def _numpy(value: Any) -> Any:
    import torch

    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value


def _state_of(obj: Any) -> Any:
    import torch

    if isinstance(obj, torch.Generator):
        return obj.get_state()
    return obj.state_dict()


def _load_state(obj: Any, value: Any) -> None:
    import torch

    if isinstance(obj, torch.Generator):
        obj.set_state(value)
    else:
        obj.load_state_dict(value)
