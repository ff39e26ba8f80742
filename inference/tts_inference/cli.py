"""The `tts-inference` console script: one argparse entry for every command.

Each command's module is imported only when that command runs, so the init
containers (sync, install-flash-attn) start without importing torch or f5_tts.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from tts_inference import __version__

# command -> (module with add_arguments(parser) and run(args) -> int, help)
COMMANDS: dict[str, tuple[str, str]] = {
    "sync": (
        "tts_inference.cache.sync",
        "make a model present and verified in the cache, exactly once",
    ),
    "install-flash-attn": (
        "tts_inference.flash_attn",
        "install flash_attn for this pod's ABI into the cache, once",
    ),
    "publish": (
        "tts_inference.cache.publish",
        "upload a model folder, or mirror an hf:// model, into the bucket with its manifest",
    ),
    "serve": (
        "tts_inference.serve",
        "run the OpenAI-compatible speech server on a synced model folder",
    ),
    "run-job": (
        "tts_inference.runjob",
        "run one batch TTSJob: synthesize a text (or this pod's part of it) into the bucket",
    ),
    "make-tiny-model": (
        "tts_inference.tiny_model",
        "write a tiny random-weight F5-TTS model and vocoder (it speaks noise; for tests and demos)",
    ),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported to add its arguments."""
    parser = argparse.ArgumentParser(
        prog="tts-inference",
        description="F5-TTS on a warm cache: sync, flash_attn install, publish, serve, run-job.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module).add_arguments(cmd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    code: int = module.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
