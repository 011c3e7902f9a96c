"""Command line: `python -m experiments.memorization --config=CONFIG --workdir=DIR`
[--config.FIELD=VALUE].

A bad command line (an unknown config key, a config file that does not
load, a bad value, a workdir that cannot be written) exits with status 2 and
one line saying what is wrong.
"""

from experiments import _cli


def main():
    _cli.run("experiments.memorization.train")


if __name__ == "__main__":
    main()
