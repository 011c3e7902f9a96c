"""Command line: python -m experiments.images --config=CONFIG --workdir=DIR [--config.FIELD=VALUE].

The CIFAR-10 configs take a variant after a colon, `--config=...cifar10_otcfm.py:tiny`.
A bad command line exits with status 2 and one line saying what is wrong.
"""

from experiments import _cli


def main():
    _cli.run("experiments.images.train")


if __name__ == "__main__":
    main()
