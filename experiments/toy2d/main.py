"""Command line: python -m experiments.toy2d --config=CONFIG --workdir=DIR [--config.FIELD=VALUE].

Bad command lines (an unknown config key, a config file that does not load)
exit with status 2 and one line saying what is wrong.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from experiments.toy2d import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.")
flags.mark_flags_as_required(["config", "workdir"])


def _main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    try:
        train.validate_config(_CONFIG.value)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


def _flags_parser(argv):
    """absl's parser, but a bad flag is one clear line and exit status 2."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, KeyError, AttributeError, ValueError, TypeError, OSError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)


def main():
    app.run(_main, flags_parser=_flags_parser)


if __name__ == "__main__":
    main()
