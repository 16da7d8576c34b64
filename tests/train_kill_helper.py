"""Run ``infoplane train`` with every optimizer step slowed down, so a test can kill it mid-run.

Usage: ``python tests/train_kill_helper.py SECONDS_PER_STEP -- <infoplane train arguments>``.
The pause comes after each update (a global optimizer post-hook) and changes no number, so a
slowed run produces the same store as a normal one.
"""

from __future__ import annotations

import sys
import time


def main(argv: list[str]) -> int:
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from infoplane.cli import main as cli_main

    pause = float(argv[0])
    rest = argv[argv.index("--") + 1 :]

    def slow_down(optimizer, args, kwargs) -> None:
        time.sleep(pause)

    register_optimizer_step_post_hook(slow_down)
    return cli_main(rest)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
