"""Run a small SQS training in its own process (killed by tests/test_trainer.py)."""

import sys
import time

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_trainer import make_trainer  # noqa: E402

if __name__ == "__main__":
    out, mode = sys.argv[1], sys.argv[2]
    trainer = make_trainer(out)
    if mode == "slow":
        step = trainer.step

        def slow_step():
            time.sleep(0.2)
            return step()

        trainer.step = slow_step
    trainer.run()
