"""CLI subcommands: each module exposes ``add_parser(subparsers)`` and ``run(args) -> int``."""

# Order here is the order shown by ``vitq --help``; later features append their module name.
COMMANDS = ["quantize", "info", "eval"]
COMMANDS += ["export", "bench", "demo", "synth", "report"]
