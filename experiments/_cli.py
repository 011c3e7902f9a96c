"""The experiments' shared command line: `--config=CONFIG --workdir=DIR [--config.FIELD=VALUE]`.

A bad command line (an unknown config key, a config file that does not
load, a bad value, a data directory that cannot be read, a workdir that
cannot be written) exits with status 2 and one line saying what is wrong,
before JAX compiles anything. A run stopped by SIGTERM saves its state first
and exits with status 143 (128 + SIGTERM); the same command resumes it. A run
whose steps stay non-finite (`config.max_consecutive_nonfinite` skipped in a
row) exits with status 1 and one line naming its last checkpoint, which it
leaves as it was.

Compiled XLA programs are kept in JAX's persistent compilation cache, so a
second run of the same config (or a resumed one) loads its train steps and
samplers instead of compiling them again: `--compilation_cache=DIR`, by
default `$FLOWJAX_COMPILATION_CACHE` or `~/.cache/flowjax/xla`; an empty
value turns it off.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

PREEMPTED_EXIT = 143  # 128 + SIGTERM: what a scheduler sees from a process it terminated
NONFINITE_EXIT = 1

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.")
_CACHE = flags.DEFINE_string(
    "compilation_cache",
    os.environ.get("FLOWJAX_COMPILATION_CACHE", os.path.expanduser("~/.cache/flowjax/xla")),
    "JAX persistent compilation cache directory ('' turns it off).")
flags.mark_flags_as_required(["config", "workdir"])


def enable_compilation_cache(directory: str, min_compile_secs: float = 0.0):
    """Keeps every XLA program that took `min_compile_secs` or more to compile in `directory`.

    Programs with host callbacks (exact OT through SciPy) are compiled as
    usual but not cached: JAX does not serialize them.
    """
    import jax

    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_secs)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _main(train, argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if isinstance(train, str):  # imported only now: a bad flag fails before JAX loads
        train = importlib.import_module(train)
    from experiments._workdir import BadInput, NonFiniteStop, Preempted
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    try:
        config = _CONFIG.value
        config.keys()  # ml_collections defers a load failure to the first access
    except OSError as e:
        path = flags.FLAGS["config"].config_filename
        why = "no such file" if not os.path.exists(path) else _first_line(e)
        _fail(f"--config: cannot load {path!r} ({why})")
    try:
        train.validate_config(config)
    except ValueError as e:
        _fail(str(e))
    try:
        os.makedirs(_WORKDIR.value, exist_ok=True)
        probe = os.path.join(_WORKDIR.value, ".write_test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        _fail(f"--workdir: cannot write to {_WORKDIR.value!r} ({e.strerror or e})")
    if _CACHE.value:
        try:
            enable_compilation_cache(_CACHE.value)
        except OSError as e:
            _fail(f"--compilation_cache: cannot use {_CACHE.value!r} ({e.strerror or e})")
    try:
        train.train_and_evaluate(config, _WORKDIR.value)
    except Preempted as e:
        print(f"{e}", file=sys.stderr)
        sys.exit(PREEMPTED_EXIT)
    except NonFiniteStop as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(NONFINITE_EXIT)
    except BadInput as e:
        _fail(str(e))


def _flags_parser(argv):
    """absl's parser, but a bad flag is one clear line and exit status 2."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, ValueError, TypeError, OSError) as e:
        # ml_collections reports an override of a missing field as an
        # AttributeError raised while handling a KeyError naming the field.
        if isinstance(e, KeyError) or isinstance(e.__context__, KeyError):
            text = str((e if isinstance(e, KeyError) else e.__context__).args[0])
            key, _, hint = text.partition("\n")  # ml_collections appends "Did you mean ..."
            key = key.strip("'\"\\")
            bad = [a for a in argv if a.startswith("--config.") and key in a.split("=")[0]]
            guess = re.search(r'Did you mean "([^"]+)"', hint)
            _fail(f"unknown config key {key!r} in {bad[0].split('=')[0] if bad else '--config'}; "
                  + (f"did you mean {guess.group(1)!r}?" if guess else
                     "the config has no such field"))
        _fail(_first_line(e))


def run(train):
    """Parses the flags and calls `train.validate_config` and `train.train_and_evaluate`.

    `train` is the experiment's train module or its dotted name; a name is
    imported after the flags parse, so a typo on the command line fails in
    about a second instead of after JAX has loaded.
    """
    app.run(functools.partial(_main, train), flags_parser=_flags_parser)
