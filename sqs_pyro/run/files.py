"""
The file names of a run directory: the one place they are spelled.

Run directory::

    config.toml              the effective configuration
    base.pt                  the base (pretrained) network and its accuracy (safetensors + JSON, no pickle)
    checkpoint.pt, log.jsonl SVI state (safetensors + JSON, with the run identity) and per-step log (--resume)
    compressed.safetensors   the exported compressed network (+ .ec.safetensors, entropy coded)
    results.json             accuracies, sparsity, sizes
    baselines/               the baselines' files and table (sqs_pyro.baselines.run_baselines)
    .lock                    held while a command writes the directory (sqs_pyro.run.lock)

Example::

    >>> import os
    >>> os.path.join("runs/default", CHECKPOINT_NAME)
    'runs/default/checkpoint.pt'
"""

BASE_NAME = "base.pt"
CONFIG_NAME = "config.toml"
CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"
EXPORT_NAME = "compressed.safetensors"
EXPORT_EC_NAME = "compressed.ec.safetensors"
RESULTS_NAME = "results.json"
BASELINES_DIR = "baselines"
