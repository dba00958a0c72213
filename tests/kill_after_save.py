"""`python -m tests.kill_after_save N key=value ...`: the train CLI, SIGKILLed right after its N-th checkpoint save.

A test-only wrapper (it patches the trainer from outside), so tests can prove that a resume after a
hard kill is exact without any hook in the toolkit itself.
"""

from __future__ import annotations

import os
import signal
import sys

from generate import trainer
from generate.cli import main

if __name__ == "__main__":
    limit = int(sys.argv.pop(1))
    saves = 0
    real_save = trainer.Trainer.save

    def save_then_die(self: trainer.Trainer, result: trainer.EvalResult) -> None:
        global saves
        real_save(self, result)
        if self.d.enabled:  # every rank dies only once rank 0 has written its files (else torchrun may kill it mid-save)
            import torch.distributed as dist

            dist.barrier()
        saves += 1
        if saves == limit:
            os.kill(os.getpid(), signal.SIGKILL)

    trainer.Trainer.save = save_then_die  # type: ignore[method-assign]
    main("train")
