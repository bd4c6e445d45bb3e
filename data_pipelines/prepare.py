"""Command line for preparing data: `python -m data_pipelines.prepare SUBCOMMAND ...`.

Each subcommand is a `Command`: a name, a one-line help, a function that adds its
arguments to its own parser and a function that runs it. A new importer (webdataset,
coco, interleaved, text, tokenizer, inspect) is one more entry in `COMMANDS`.

User errors (a missing file, an existing output, a bad value) print one line naming the
thing and exit with status 1; argparse's own usage errors exit with status 2, and so do
config mistakes (`inspect`: a config that does not load, a ConfigError naming the key),
as at the other entry points.
"""

import argparse
import dataclasses
import os
import sys
from typing import Callable

PROG = 'python -m data_pipelines.prepare'


class UserError(Exception):
  """An error caused by the command's input, reported without a traceback."""


class ConfigMistake(UserError):
  """A config that does not load or cannot work; exit status 2 (a usage error)."""


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
                      help='replace the synthetic world already in DIR (never anything else)')


def _run_synthetic(args: argparse.Namespace) -> None:
  from data_pipelines import synthetic  # pylint: disable=import-outside-toplevel
  # Anything but a missing or empty directory or a synthetic world is refused, --force or
  # not, and so is an empty --out (it would be the current directory).
  synthetic.check_can_generate_into(args.out)
  out = os.path.abspath(args.out)
  if synthetic.is_complete(out) and not args.force:
    raise UserError(f'--out {args.out!r} already holds a complete synthetic world; pass '
                    '--force to replace it.')
  synthetic.generate_atomically(out, args.seed, scale=args.scale, replace=True)
  print(f'Wrote the synthetic world (seed {args.seed}, scale {args.scale}) to {out}')


# ---------------------------------------------------------------------------- importers


def _non_negative_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f'{text!r} is not an integer') from None
  if value < 0:
    raise argparse.ArgumentTypeError(f'{text!r} must be >= 0')
  return value


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--out', required=True, metavar='DIR',
                      help='directory of the prepared source (must not hold one already)')
  parser.add_argument('--num-workers', type=_non_negative_int, default=1,
                      help='processes reading the input (default 1: in this process)')
  parser.add_argument('--num-shards', type=_non_negative_int, default=0,
                      help='array_record files to write (default 0: chosen from the size)')
  parser.add_argument('--no-progress', action='store_true', help='no progress bar')


def _add_image_arguments(parser: argparse.ArgumentParser) -> None:
  from data_pipelines import images  # pylint: disable=import-outside-toplevel
  parser.add_argument(
      '--max-image-pixels', type=_non_negative_int, default=images.DEFAULT_MAX_IMAGE_PIXELS,
      help='skip (and count) images of more pixels than this, and image files too large '
           f'to hold fewer (default {images.DEFAULT_MAX_IMAGE_PIXELS}; 0: no bound); '
           'training reads the same bound from data.max_image_pixels')


def _import(kind: str, units, read_unit, args, **kwargs) -> None:
  from data_pipelines.formats import common  # pylint: disable=import-outside-toplevel
  options = ({'max_image_pixels': args.max_image_pixels}
             if hasattr(args, 'max_image_pixels') else {})
  report = common.run_import(kind, units, read_unit, out=args.out,
                             num_workers=args.num_workers, num_shards=args.num_shards or None,
                             description=f'{args.command} -> {args.out}',
                             show_progress=not args.no_progress, options=options, **kwargs)
  print(report.summary())


def _named_inputs(patterns) -> list[tuple[str, str]]:
  """(path, name in record ids) of every input file."""
  from data_pipelines.formats import common  # pylint: disable=import-outside-toplevel
  paths = common.expand_inputs(patterns)
  return list(zip(paths, common.input_names(paths)))


def _add_webdataset_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--input', required=True, nargs='+', metavar='GLOB',
                      help="tar shards, e.g. 'DIR/*.tar' (KEY.jpg + KEY.txt [+ KEY.json])")
  _add_image_arguments(parser)
  _add_output_arguments(parser)


def _run_webdataset(args: argparse.Namespace) -> None:
  from data_pipelines.formats import webdataset  # pylint: disable=import-outside-toplevel
  _import('captions', _named_inputs(args.input), webdataset.reader(args.max_image_pixels),
          args)


def _add_coco_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--annotations', required=True, metavar='FILE.json',
                      help='COCO captions annotations (captions_train2017.json)')
  parser.add_argument('--images', required=True, metavar='DIR',
                      help='directory holding the file_name of every image (nothing outside '
                           'it is read)')
  _add_image_arguments(parser)
  _add_output_arguments(parser)


def _run_coco(args: argparse.Namespace) -> None:
  from data_pipelines.formats import coco  # pylint: disable=import-outside-toplevel
  if not os.path.isfile(args.annotations):
    raise UserError(f'--annotations {args.annotations!r} does not exist')
  if not os.path.isdir(args.images):
    raise UserError(f'--images {args.images!r} is not a directory')
  units, early = coco.load_units(args.annotations, args.images)
  _import('captions', units, coco.reader(args.max_image_pixels), args, skipped_before=early)


def _add_interleaved_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--input', required=True, nargs='+', metavar='GLOB',
                      help='OBELICS-style parquet/jsonl (texts, images) or MMC4 jsonl files')
  parser.add_argument('--images', default=None, metavar='DIR',
                      help='root of relative image paths; nothing outside it is read '
                           '(default: the directory of each input file)')
  _add_image_arguments(parser)
  _add_output_arguments(parser)


def _run_interleaved(args: argparse.Namespace) -> None:
  from data_pipelines.formats import interleaved  # pylint: disable=import-outside-toplevel
  if args.images is not None and not os.path.isdir(args.images):
    raise UserError(f'--images {args.images!r} is not a directory')
  units = [(path, args.images, name) for path, name in _named_inputs(args.input)]
  _import('interleaved', units, interleaved.reader(args.max_image_pixels), args)


def _add_text_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--input', required=True, nargs='+', metavar='GLOB',
                      help='jsonl or parquet files with a `text` field')
  _add_output_arguments(parser)


def _run_text(args: argparse.Namespace) -> None:
  from data_pipelines.formats import text  # pylint: disable=import-outside-toplevel
  _import('text', _named_inputs(args.input), text.read_texts, args)


# ---------------------------------------------------------------------------- inspect


def _add_inspect_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--config', required=True, metavar='FILE.py[:ARG]',
                      help='experiment config whose data section to read')
  parser.add_argument('--rows', type=_non_negative_int, default=1000,
                      help='rows to read (default 1000)')
  parser.add_argument('--json', action='store_true', help='print one JSON object')


def _config_file_error(error: BaseException) -> str:
  """One line for an error a config file raised (ml_collections nests a locked config's
  KeyError, whose message lists every other field, in an AttributeError)."""
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]
  text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
  lines = text.splitlines() or ['']
  hints = [line for line in lines[1:] if line.startswith('Did you mean')]
  return ' '.join([lines[0].partition(' Other fields present')[0], *hints])


def _run_inspect(args: argparse.Namespace) -> None:
  import json  # pylint: disable=import-outside-toplevel
  from data_pipelines import inspection  # pylint: disable=import-outside-toplevel
  from mm1_jax import config_lib  # pylint: disable=import-outside-toplevel
  try:
    config = inspection.load_config(args.config)
  except FileNotFoundError as error:
    raise ConfigMistake(str(error)) from None
  except (ValueError, KeyError, AttributeError) as error:  # raised by the config file
    raise ConfigMistake(f'--config {args.config!r}: {_config_file_error(error)}') from None
  try:
    config_lib.validate(config)
    config_lib.check_data(config)  # generates the synthetic world if asked; never over data
  except config_lib.ConfigError as error:
    raise ConfigMistake(str(error)) from None
  stats = inspection.measure(config, max(args.rows, 1))
  print(json.dumps(stats) if args.json else inspection.format_table(stats))


COMMANDS = (
    Command('synthetic', 'generate the embedded synthetic world (sources, tokenizer, eval)',
            _add_synthetic_arguments, _run_synthetic),
    Command('webdataset', 'WebDataset tar shards (img2dataset) -> a captions source',
            _add_webdataset_arguments, _run_webdataset),
    Command('coco', 'COCO captions annotations + images -> a captions source',
            _add_coco_arguments, _run_coco),
    Command('interleaved', 'OBELICS parquet/jsonl or MMC4 jsonl -> an interleaved source',
            _add_interleaved_arguments, _run_interleaved),
    Command('text', 'jsonl/parquet with a text field -> a text source',
            _add_text_arguments, _run_text),
    Command('inspect', 'read rows of a configured mixture and report what it delivers',
            _add_inspect_arguments, _run_inspect),
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
    return 2 if isinstance(error, ConfigMistake) else 1
  return 0


def run() -> None:
  """Console-script entry point (`mm1-prepare`)."""
  sys.exit(main())


if __name__ == '__main__':
  run()
