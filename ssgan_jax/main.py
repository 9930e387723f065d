"""Command line: `python -m ssgan_jax.main --flagfile=experiments/mnist.flags --workdir=...`.

One flag per field of `config.Config`, plus --workdir and the launch flags of a run over
several processes. Flagfiles set any of them and the command line overrides the flagfile.
Bad input exits with code 2 and one line on stderr. SIGTERM or SIGINT saves a checkpoint at
the current step and exits 0; the same command resumes.
"""
import dataclasses
import json
import logging as py_logging
import os
import sys
import typing

from absl import app, flags, logging

from ssgan_jax import config as config_lib
from ssgan_jax import multihost, preemption, xla_cpu

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
  # Launch settings, not part of the Config: the same run may use any number of processes.
  flags.DEFINE_string('coordinator_address', os.environ.get('JAX_COORDINATOR_ADDRESS'),
                      'host:port of process 0, for a run over several processes '
                      '(default $JAX_COORDINATOR_ADDRESS).', flag_values=flag_values)
  flags.DEFINE_string('num_processes', os.environ.get('JAX_NUM_PROCESSES', '1'),
                      'Processes of the run (default $JAX_NUM_PROCESSES or 1).',
                      flag_values=flag_values)
  flags.DEFINE_string('process_id', os.environ.get('JAX_PROCESS_ID', '0'),
                      'This process, 0 ... num_processes - 1 (default $JAX_PROCESS_ID or 0).',
                      flag_values=flag_values)
  flags.DEFINE_enum('distributed', 'explicit', multihost.DISTRIBUTED_MODES,
                    'explicit: the three flags above launch the run; auto: '
                    "jax.distributed.initialize() detects the cluster's processes (Cloud TPU "
                    'pods, SLURM, Open MPI), the flags above given on the command line override '
                    'it. See docs/gpu_tpu.md.', flag_values=flag_values)


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


def fail(message: str, exit_code: int = 2) -> typing.NoReturn:
  """Reports one line on stderr and exits (2: bad input)."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(exit_code)


def parse_flags(argv: list[str]) -> list[str]:
  """absl parsing, with bad flags reported in one line and exit code 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e).splitlines()[0])


def _as_int(name: str, value: str) -> int:
  """Launch flags are strings so that their defaults can come from the environment."""
  try:
    return int(value)
  except ValueError:
    raise config_lib.ConfigError(name, value, 'must be an integer') from None


def main(argv: list[str]) -> None:
  xla_cpu.apply_entry_point_choice()
  if len(argv) > 1:
    fail(f'unexpected arguments: {" ".join(argv[1:])}')
  if not flags.FLAGS.workdir:
    fail('--workdir is required')
  config = config_from_flags()
  logging.get_absl_handler().addFilter(_QuietOrbax())
  try:
    config_lib.check_utf8('workdir', flags.FLAGS.workdir)
    config_lib.validate(config)
    launch = {name: flags.FLAGS[name].value
              for name in ('coordinator_address', 'num_processes', 'process_id')}
    for name in ('num_processes', 'process_id'):
      launch[name] = _as_int(name, launch[name])
    if flags.FLAGS.distributed == 'auto':  # detection fills what the command line leaves out
      launch = {name: value if flags.FLAGS[name].present else None
                for name, value in launch.items()}
    launch['distributed'] = flags.FLAGS.distributed
    multihost.check_launch(**launch)
    multihost.initialize(**launch)
    # Imported here so that bad flags are reported without loading TensorFlow.
    from ssgan_jax import train
    with preemption.stop_on_signals() as stop_requested:
      summary = train.train_and_evaluate(config, flags.FLAGS.workdir, stop_requested)
  except config_lib.ConfigError as e:
    fail(str(e))
  except FloatingPointError as e:  # train.NonFiniteLossError: not bad input, a failed run.
    fail(str(e), exit_code=1)
  logging.info('Done: %s', summary)
  print(json.dumps(summary), flush=True)


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=parse_flags)
