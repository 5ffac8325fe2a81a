"""
The application around the core: the ``sqs-pyro`` command line and what it runs.

* :mod:`.cli` -- the command line; :mod:`.config` -- :class:`~sqs_pyro.run.config.RunConfig`
  (TOML, ``--set``), :mod:`.recipes` -- its presets;
* :mod:`.pipeline` -- the stages of a run (base network, compress, evaluate, export),
  :mod:`.main_job` -- the stages in order with the baselines, :mod:`.files` -- the run
  directory's file names;
* :mod:`.trainer` -- the SVI loop (:mod:`.schedules`: the pruning schedule), :mod:`.train_base`
  -- the base network, :mod:`.blockwise` -- block-wise runs of decoder LLMs;
* :mod:`.checkpoint`, :mod:`.identity`, :mod:`.lock`, :mod:`.distributed` -- safe, resumable,
  single-writer, multi-process runs.
* :mod:`.results` -- the one results writer (``<stem>.json`` and ``<stem>.md``), :mod:`.table` -- the
  one Markdown table formatter.

The core (distributions, ELBO, handlers, prior spec, export) is in :mod:`sqs_pyro`, the models in
:mod:`sqs_pyro.models`, the guides in :mod:`sqs_pyro.guides`, the baselines in :mod:`sqs_pyro.baselines`.

Example::

    >>> from sqs_pyro.run.cli import main
    >>> main(["compress", "--smoke", "--out", "/tmp/sqs-smoke"])  # doctest: +SKIP
    0
"""
