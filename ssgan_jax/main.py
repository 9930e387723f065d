"""Command line: `python -m ssgan_jax.main --flagfile=experiments/mnist.flags --workdir=...`.

One flag per field of `config.Config`, plus --workdir. Flagfiles set any of them and the
command line overrides the flagfile. Bad input exits with code 2 and one line on stderr.
"""
import dataclasses
import json
import logging as py_logging
import sys
import typing

from absl import app, flags, logging

from ssgan_jax import config as config_lib

_DEFINE_BY_TYPE = {str: flags.DEFINE_string, int: flags.DEFINE_integer,
                   float: flags.DEFINE_float, bool: flags.DEFINE_boolean}


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """One absl flag per Config field, with the field's default and help."""
  hints = typing.get_type_hints(config_lib.Config)
  for field in dataclasses.fields(config_lib.Config):
    kind = hints[field.name]
    kind = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
    _DEFINE_BY_TYPE[kind](field.name, field.default, field.metadata['help'],
                          flag_values=flag_values)
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints and metrics (required).',
                      flag_values=flag_values)


def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> config_lib.Config:
  """The Config the parsed flags describe."""
  return config_lib.Config(**{f.name: flag_values[f.name].value
                              for f in dataclasses.fields(config_lib.Config)})


class _QuietOrbax(py_logging.Filter):
  """Drops Orbax's per-save INFO lines, which would bury the training log."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno >= py_logging.WARNING or '/orbax/' not in record.pathname


def parse_config(argv: list[str]) -> tuple[config_lib.Config, str]:
  """(Config, workdir) from command-line style arguments, for scripts that reuse the flags."""
  flag_values = flags.FlagValues()
  define_flags(flag_values)
  flag_values(['ssgan_jax'] + list(argv))
  return config_from_flags(flag_values), flag_values.workdir


def _fail(message: str, exit_code: int = 2) -> typing.NoReturn:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(exit_code)


def parse_flags(argv: list[str]) -> list[str]:
  """absl parsing, with bad flags reported in one line and exit code 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(str(e).splitlines()[0])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f'unexpected arguments: {" ".join(argv[1:])}')
  if not flags.FLAGS.workdir:
    _fail('--workdir is required')
  config = config_from_flags()
  logging.get_absl_handler().addFilter(_QuietOrbax())
  try:
    config_lib.validate(config)
    # Imported here so that bad flags are reported without loading TensorFlow.
    from ssgan_jax import train
    summary = train.train_and_evaluate(config, flags.FLAGS.workdir)
  except config_lib.ConfigError as e:
    _fail(str(e))
  except FloatingPointError as e:  # train.NonFiniteLossError: not bad input, a failed run.
    _fail(str(e), exit_code=1)
  logging.info('Done: %s', summary)
  print(json.dumps(summary), flush=True)


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=parse_flags)
