"""``python -m reconad`` (and ``torchrun -m reconad``): the command line."""

from reconad.cli import run

if __name__ == "__main__":
    run()
