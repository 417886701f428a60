"""The command line: ``python -m mxlab run | mix | sweep | eval | export | report | presets | formats``.

Exit codes scripts can rely on: 0 ok, 2 a usage or user error (one line on stderr, no traceback),
130 cancelled (Ctrl-C), 1 an unexpected error (traceback; please report it).
"""
from __future__ import annotations

import logging
import sys
import traceback
from typing import Sequence

from ..errors import Cancelled, MxlabError
from .commands import COMMANDS, EXIT_CANCELLED, EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE
from .parser import build_parser, recipe_from_args

__all__ = ["COMMANDS", "EXIT_CANCELLED", "EXIT_OK", "EXIT_UNEXPECTED", "EXIT_USAGE", "build_parser", "main",
           "recipe_from_args"]


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    if args.quiet and args.command in ("run", "eval"):  # transformers draws its own "Loading weights" bar
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if not args.verbose:  # transformers / httpx chatter is noise at INFO
        for noisy in ("transformers", "httpx", "urllib3", "filelock"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the command, map failures to exit codes; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse itself exits 2 with a usage line on bad flags
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    _setup_logging(args)
    try:
        return COMMANDS[args.command](args)
    except (Cancelled, KeyboardInterrupt):
        print("mxlab: cancelled; nothing partial was written", file=sys.stderr)
        return EXIT_CANCELLED
    except MxlabError as e:
        message = " ".join(str(e).split())     # one line, always (YAML and HF errors span several)
        print(f"mxlab {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except Exception:  # a bug, not a user error: show everything
        traceback.print_exc(file=sys.stderr)
        print(f"mxlab {args.command}: unexpected error (a bug; please report it with the traceback above)",
              file=sys.stderr)
        return EXIT_UNEXPECTED
