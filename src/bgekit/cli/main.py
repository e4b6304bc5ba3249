"""Entry point of the ``bgekit`` command: dispatches to one module per command."""

from __future__ import annotations

import argparse
import importlib
import sys

from bgekit.errors import BgekitError

# command name -> module; each module defines add_arguments(parser) and run(args) -> int
COMMANDS = {
    "encode": "bgekit.cli.encode",
    "eval": "bgekit.cli.eval",
    "rerank": "bgekit.cli.rerank",
    "mine": "bgekit.cli.mine",
    "score": "bgekit.cli.score",
    "finetune": "bgekit.cli.finetune",
    "merge": "bgekit.cli.merge",
    "index": "bgekit.cli.index",
    "search": "bgekit.cli.search",
    "serve": "bgekit.cli.serve",
    "convert-visualized": "bgekit.cli.convert_visualized",
    "quantize": "bgekit.cli.quantize",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bgekit", description="Retrieval toolkit for BGE and HF models.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # command not part of this build
            raise
        doc = (module.__doc__ or "").strip().splitlines()
        command = sub.add_parser(name, help=doc[0] if doc else None, description=module.__doc__)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except BgekitError as exc:
        print(f"bgekit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bgekit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
