"""A training loop recording with :class:`infoplane.train.recorder.Recorder`, slowed down so a
test can kill it: ``python tests/recorder_kill_helper.py STORE SECONDS_PER_STEP``."""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F

from infoplane.train.recorder import Recorder
from infoplane.train.training import deterministic_torch


def main(store: str, pause: float) -> int:
    torch.manual_seed(0)
    data = torch.Generator().manual_seed(1)
    x = torch.randn(120, 10, generator=data)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    model = torch.nn.Sequential(
        torch.nn.Linear(10, 16), torch.nn.Tanh(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 3)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    probes = {"train": (x[:40], y[:40]), "test": (x[80:], y[80:])}
    with (
        deterministic_torch(torch.device("cpu")),
        Recorder(store, model, layers=["1", "3"], probes=probes, steps=range(0, 41, 4),
                 iterations_per_epoch=4, optimizer=optimizer) as rec,
    ):  # fmt: skip
        for step in range(rec.step, 40):
            order = torch.randperm(120, generator=torch.Generator().manual_seed(step // 4))
            batch = order[(step % 4) * 30 : (step % 4 + 1) * 30]
            loss = F.cross_entropy(model(x[batch]), y[batch])  # dropout: torch's random state
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            time.sleep(pause)
            rec.update()
            print(f"step {rec.step}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], float(sys.argv[2])))
