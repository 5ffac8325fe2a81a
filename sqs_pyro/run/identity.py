"""
The identity of a run: a hash of the config keys that change its result and a
hash of its base network's weights.

Every checkpoint, ``results.json`` and compressed file a run writes carries
its identity; ``--resume`` and the commands that read a run directory compare
it with the directory's config and base network, and refuse another run's
files with :class:`~sqs_pyro.errors.RunMismatchError` naming the keys that
differ. Keys that do not change the fitted posterior (where the run is
written, the device, evaluation and export settings, how often it logs and
checkpoints, and the *path* of the base network, whose weights are hashed
instead) are left out, so changing them is allowed.

Example::

    >>> from sqs_pyro.run.config import RunConfig
    >>> a = run_identity(RunConfig(), base_sha256="0" * 64)
    >>> b = run_identity(RunConfig().override(["compress.sparsity=0.9"]), base_sha256="0" * 64)
    >>> try:
    ...     check_identity(a, b, "the checkpoint")
    ... except RunMismatchError as e:
    ...     print(str(e).split(":")[0])
    the checkpoint belongs to another run
"""

import hashlib
import json

from ..errors import RunMismatchError
from .config import default_prior_for

__all__ = ["IGNORED_KEYS", "RunMismatchError", "check_identity", "config_key_values", "run_identity"]

#: Dotted config keys (or section prefixes) that are not part of a run's identity.
IGNORED_KEYS = ("out_dir", "device", "eval", "export", "data.eval_batch_size", "data.test_subset",
                "model.base_checkpoint", "compress.checkpoint_every", "compress.log_every")


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _ignored(key):
    return any(key == k or key.startswith(k + ".") for k in IGNORED_KEYS)


def config_key_values(cfg):
    """``dotted key -> value`` of the config keys in a run's identity (the prior filled in as the run uses it)."""
    if cfg.prior is None:
        cfg = cfg.replace_prior(default_prior_for(cfg.model.arch))
    return {k: v for k, v in sorted(_flatten(cfg.to_dict()).items()) if not _ignored(k)}


def run_identity(cfg, base_sha256=None):
    """``{"config_sha256", "base_sha256", "config"}`` of a run (``config``: the key values that were hashed)."""
    values = config_key_values(cfg)
    digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()
    return {"config_sha256": digest, "base_sha256": base_sha256, "config": values}


def differences(found, expected):
    """``["key: stored X, now Y", ...]`` between two identities' configs."""
    a, b = found.get("config") or {}, expected.get("config") or {}
    missing = object()
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key, missing), b.get(key, missing)
        if x != y:
            out.append(f"{key}: stored {'(unset)' if x is missing else repr(x)}, now {'(unset)' if y is missing else repr(y)}")
    return out


def check_identity(found, expected, what, *, hint="start a new run in another directory"):
    """Raise :class:`RunMismatchError` if ``found`` (stored with ``what``) is not the run ``expected``.
    Either being ``None`` (a file written before identities existed, or nothing to compare) passes; so
    does a missing base hash on either side."""
    if not found or not expected:
        return
    problems = []
    if found.get("config_sha256") != expected.get("config_sha256"):
        diff = differences(found, expected)
        problems.append("config differs (" + ("; ".join(diff[:8]) if diff else "hash only") + ")")
    fb, eb = found.get("base_sha256"), expected.get("base_sha256")
    if fb and eb and fb != eb:
        problems.append(f"base network differs (weights sha256 {fb[:12]}... stored, {eb[:12]}... now)")
    if problems:
        raise RunMismatchError(f"{what} belongs to another run: " + "; ".join(problems) + f"; {hint}")
