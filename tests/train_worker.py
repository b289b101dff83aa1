"""`unimodal train` for tests/test_train.py's multi-process and fault tests, with two test hooks.

    torchrun --standalone --nproc_per_node 2 tests/train_worker.py --out DIR [section.key=value ...]
    deepspeed --num_gpus 2 tests/train_worker.py --out DIR [section.key=value ...]

- Every rank appends the per-step stats it computed to `DIR/losses-rank{r}.jsonl` (the trainer
  all-reduces them, so every rank holds the loss one process computes on the whole global batch).
- `UNIMODAL_TEST_CRASH_IN_SAVE=N`: the process SIGKILLs itself inside the checkpoint write of
  step N, right after DeepSpeed wrote its shards and before the extras and the COMPLETE marker.
"""

from __future__ import annotations

import json
import os
import signal
import sys


def main() -> int:
    from unimodal.cli import main as cli_main
    from unimodal.train import checkpoint
    from unimodal.train.trainer import Trainer

    train_step = Trainer.train_step

    def logged_train_step(self, **kw):
        stats = train_step(self, **kw)
        with open(self.out / f"losses-rank{self.rank}.jsonl", "a") as f:
            f.write(json.dumps({"step": self.step, **stats}) + "\n")
        return stats

    Trainer.train_step = logged_train_step

    crash_step = int(os.environ.get("UNIMODAL_TEST_CRASH_IN_SAVE", "-1"))
    save = checkpoint.save

    def crashing_save(engine, root, step, *args, **kwargs):
        if step == crash_step:
            write_shards = engine.save_checkpoint

            def save_then_die(*a, **k):
                write_shards(*a, **k)
                os.kill(os.getpid(), signal.SIGKILL)

            engine.save_checkpoint = save_then_die
        return save(engine, root, step, *args, **kwargs)

    checkpoint.save = crashing_save
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]  # the deepspeed launcher adds it
    return cli_main(["train", *args])


if __name__ == "__main__":
    sys.exit(main())
