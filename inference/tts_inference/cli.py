"""The `tts-inference` console script: one argparse entry for every command.

Each command's module is imported only when that command runs, so the init
containers (sync, install-flash-attn) start without importing torch or f5_tts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tts_inference import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tts-inference",
        description="F5-TTS on a warm cache: sync, flash_attn install, publish, serve.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
