"""`vitq` command line: dispatches to the modules in :mod:`vitq.commands`."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading

from .commands import COMMANDS
from .errors import VitqError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitq", description="Post-training quantization for vision transformers and CLIP.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        module = importlib.import_module(f".commands.{name}", __package__)
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
    return parser


def _terminate_as_interrupt(signum, frame):
    # SIGTERM (a job scheduler, `kill`) unwinds like Ctrl-C, so temporary files are removed and
    # nothing is renamed into place half-written.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    quiet = bool(getattr(args, "quiet", False))
    if quiet:
        _library_bars(False)  # transformers' "Loading weights" bar too
        # diffusers, imported when a class name is looked up, warns about torchao versions at import
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    restore = None if sys.stderr.isatty() else _bars_for_logs()
    try:
        return int(args._run(args) or 0)
    except VitqError as err:
        print(f"vitq {args.command}: error: {err.message}", file=sys.stderr)
        if err.hint:
            print(f"  what to do: {err.hint}", file=sys.stderr)
        return err.exit_code
    except OSError as err:  # disk full, permissions, a path that vanished: name it, no traceback
        where = f" {err.filename}" if getattr(err, "filename", None) else ""
        print(f"vitq {args.command}: error: cannot read or write{where}: {err.strerror or err}", file=sys.stderr)
        print("  what to do: check the path, its permissions and the free disk space", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"vitq {args.command}: interrupted; nothing was written in place of earlier results.", file=sys.stderr)
        return 130
    finally:
        if quiet:
            _library_bars(True)
        if restore is not None:
            restore()


LOG_INTERVAL_S = 10.0


def _bars_for_logs():
    """Progress bars written to a log or a pipe (not a terminal) update every ``LOG_INTERVAL_S``
    seconds instead of many times a second, so a log gets a line now and then, not a flood of
    carriage returns. Returns the function that undoes it."""
    import functools

    import tqdm

    original = tqdm.std.tqdm.__init__
    tqdm.std.tqdm.__init__ = functools.partialmethod(original, mininterval=LOG_INTERVAL_S)

    def restore():
        tqdm.std.tqdm.__init__ = original

    return restore


def _library_bars(on: bool) -> None:
    """Switch the progress bars transformers and the hub print while loading."""
    from transformers.utils import logging as hf_logging

    (hf_logging.enable_progress_bar if on else hf_logging.disable_progress_bar)()


if __name__ == "__main__":
    sys.exit(main())
