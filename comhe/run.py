"""``python -m comhe.run table1 [--profile smoke] [key=value ...]``: the suite's command line (``suite/cli.py``).

An entry point only: nothing in the package imports it, so the library stays free of the suite."""
import sys

from .suite.cli import main  # noqa: F401  (comhe.run.main(argv) from Python)

if __name__ == "__main__":
    sys.exit(main())
