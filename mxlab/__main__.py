"""``python -m mxlab``: the command line (see mxlab/cli.py, or ``python -m mxlab --help``)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
