"""One process of a 2-process data-parallel SQS run (launched by tests/test_distributed.py via torchrun)."""

import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from sqs_pyro.run.distributed import init_from_env  # noqa: E402
from test_trainer import make_trainer  # noqa: E402

if __name__ == "__main__":
    init_from_env("cpu")
    make_trainer(sys.argv[1]).run()
