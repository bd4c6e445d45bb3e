"""Command line for preparing data: `python -m data_pipelines.prepare SUBCOMMAND ...`.

Each subcommand is a `Command`: a name, a one-line help, a function that adds its
arguments to its own parser and a function that runs it. A new importer (webdataset,
coco, interleaved, text, tokenizer, inspect) is one more entry in `COMMANDS`.

User errors (a missing file, an existing output, a bad value) print one line naming the
thing and exit with status 1; argparse's own usage errors exit with status 2.
"""

import argparse
import dataclasses
import os
import sys
from typing import Callable

PROG = 'python -m data_pipelines.prepare'


class UserError(Exception):
  """An error caused by the command's input, reported without a traceback."""


@dataclasses.dataclass(frozen=True)
class Command:
  name: str
  help: str
  add_arguments: Callable[[argparse.ArgumentParser], None]
  main: Callable[[argparse.Namespace], None]


def _positive_float(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f'{text!r} is not a number') from None
  if not value > 0:
    raise argparse.ArgumentTypeError(f'{text!r} must be positive')
  return value


# ---------------------------------------------------------------------------- synthetic


def _add_synthetic_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--out', required=True, metavar='DIR',
                      help='directory to create (the world is written atomically)')
  parser.add_argument('--seed', type=int, default=0, help='world seed (default 0)')
  parser.add_argument('--scale', type=_positive_float, default=1.0,
                      help='multiplies every count; small values for quick looks and tests')
  parser.add_argument('--force', action='store_true',
                      help='replace DIR if it already holds data')


def _run_synthetic(args: argparse.Namespace) -> None:
  from data_pipelines import synthetic  # pylint: disable=import-outside-toplevel
  out = os.path.abspath(args.out)
  if os.path.exists(out) and not os.path.isdir(out):
    raise UserError(f'--out {args.out!r} exists and is not a directory.')
  if os.path.isdir(out) and os.listdir(out) and not args.force:
    raise UserError(f'--out {args.out!r} already holds data; pass --force to replace it.')
  synthetic.generate_atomically(out, args.seed, scale=args.scale, replace=True)
  print(f'Wrote the synthetic world (seed {args.seed}, scale {args.scale}) to {out}')


COMMANDS = (
    Command('synthetic', 'generate the embedded synthetic world (sources, tokenizer, eval)',
            _add_synthetic_arguments, _run_synthetic),
)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
  subparsers = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
  for command in COMMANDS:
    sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
    command.add_arguments(sub)
    sub.set_defaults(run=command.main)
  return parser


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    args.run(args)
  except (UserError, FileNotFoundError, FileExistsError, NotADirectoryError,
          PermissionError, ValueError) as error:
    print(f'{PROG} {args.command}: error: {error}', file=sys.stderr)
    return 1
  return 0


def run() -> None:
  """Console-script entry point (`mm1-prepare`)."""
  sys.exit(main())


if __name__ == '__main__':
  run()
