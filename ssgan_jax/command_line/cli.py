"""Command-line plumbing shared by main, demo, evaluate and predict.

Flags: one per `config.Config` field, grouped for `--help`, plus the workdir, launch and
output flags. Failures: one line on stderr and exit code 2. Logging: a default run shows
ssgan_jax's own lines and warnings; other libraries' start-up chatter needs `--verbose`.
`run` is the one place an entry point starts, so process-wide start-up settings go there.
"""
import dataclasses
import logging as py_logging
import os
import sys
import tempfile
import typing
from typing import Callable

from absl import app, flags, logging

from ssgan_jax import config as config_lib
from ssgan_jax.networks import xla_cpu
from ssgan_jax.training import multihost

_DEFINE_BY_TYPE = {str: flags.DEFINE_string, int: flags.DEFINE_integer,
                   float: flags.DEFINE_float, bool: flags.DEFINE_boolean}

# The --help groups, common flags first. Config fields not named here go under 'other'.
FLAG_GROUPS = {
    'data': ('dataset', 'data_dir', 'num_labeled', 'label_seed', 'label_selection',
             'num_validation', 'image_size', 'train_split', 'test_split'),
    'model and losses': ('model', 'mode', 'unsup_loss', 'gen_loss', 'feature_norm',
                         'unsup_weight', 'weight_norm_init', 'weight_norm_scales',
                         'gen_output_layer', 'historical_averaging', 'one_sided_label_smoothing',
                         'minibatch_kernels', 'minibatch_kernel_dim', 'minibatch_group_size'),
    'training': ('workdir', 'num_steps', 'batch_size', 'gen_steps', 'gen_steps_until',
                 'learning_rate', 'lr_decay_fraction', 'adam_beta1', 'ema_decay', 'ema_horizon',
                 'seed', 'checkpoint_every', 'keep_checkpoints'),
    'evaluation and output': ('eval_every', 'log_every', 'sample_every', 'eval_params',
                              'eval_batch_size', 'quiet', 'verbose', 'step'),
    'speed': ('parallel', 'compute_dtype', 'matmul_precision', 'steps_per_dispatch', 'data_on_device',
              'donate_state', 'conv_transpose', 'conv_input_gradient', 'conv_kernel_gradient',
              'conv_tiny_maps', 'dropout_sampler'),
    'several processes': ('coordinator_address', 'num_processes', 'process_id', 'distributed'),
}
_HELP_ARGS = ('--help', '-help', '-h', '-?', '--helpfull', '--helpshort')


def define_output_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """--verbose, which every entry point takes."""
  flags.DEFINE_boolean('verbose', False, "Also show other libraries' informational log lines.",
                       flag_values=flag_values)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """One absl flag per Config field, with the field's default and help, plus --workdir,
  --verbose and the launch flags of a run over several processes."""
  hints = typing.get_type_hints(config_lib.Config)
  for field in dataclasses.fields(config_lib.Config):
    kind = hints[field.name]
    kind = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
    _DEFINE_BY_TYPE[kind](field.name, field.default, field.metadata['help'],
                          flag_values=flag_values)
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints and metrics (required).',
                      flag_values=flag_values)
  define_output_flags(flag_values)
  # Launch settings, not part of the Config: the same run may use any number of processes.
  flags.DEFINE_string('coordinator_address', os.environ.get('JAX_COORDINATOR_ADDRESS'),
                      'host:port of process 0 (default $JAX_COORDINATOR_ADDRESS).',
                      flag_values=flag_values)
  flags.DEFINE_string('num_processes', os.environ.get('JAX_NUM_PROCESSES', '1'),
                      'Processes of the run (default $JAX_NUM_PROCESSES or 1).',
                      flag_values=flag_values)
  flags.DEFINE_string('process_id', os.environ.get('JAX_PROCESS_ID', '0'),
                      'This process, 0 ... num_processes - 1 (default $JAX_PROCESS_ID or 0).',
                      flag_values=flag_values)
  flags.DEFINE_enum('distributed', 'explicit', multihost.DISTRIBUTED_MODES,
                    'explicit: the three flags above launch the run; auto: '
                    "jax.distributed.initialize() detects the cluster (see docs/gpu_tpu.md).",
                    flag_values=flag_values)


def grouped_flags(flag_values: flags.FlagValues) -> dict[str, list]:
  """{group: [flag, ...]} in FLAG_GROUPS order, for the flags defined in `flag_values`
  (absl's own flags left out); flags in no group come last, under 'other'."""
  own = [name for name, module in ((n, flag_values.find_module_defining_flag(n))
                                   for n in flag_values)
         if module is not None and not module.startswith('absl')]
  groups = {group: [flag_values[n] for n in names if n in own]
            for group, names in FLAG_GROUPS.items()}
  grouped = {n for names in FLAG_GROUPS.values() for n in names}
  groups['other'] = [flag_values[n] for n in own if n not in grouped]
  return {group: members for group, members in groups.items() if members}


def default_text(flag) -> str:
  return '(none)' if flag.default is None else flag.default_as_str.strip("'")


def help_text(usage: str, flag_values: flags.FlagValues = flags.FLAGS) -> str:
  """`usage`, then one line per flag, by group; the full reference is docs/flags.md."""
  lines = [usage.strip(), '']
  for group, members in grouped_flags(flag_values).items():
    lines.append(f'{group}:')
    lines += [f'  --{flag.name}={default_text(flag)}'.ljust(34) + f' {flag.help}'
              for flag in members]
    lines.append('')
  lines.append('Every flag in detail: docs/flags.md. --flagfile=FILE reads flags from FILE; '
               'the command line overrides it.')
  return '\n'.join(lines)


def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> config_lib.Config:
  """The Config the parsed flags describe."""
  return config_lib.Config(**{f.name: flag_values[f.name].value
                              for f in dataclasses.fields(config_lib.Config)})


def resolved_config(flag_values: flags.FlagValues = flags.FLAGS) -> config_lib.Config:
  """The parsed flags' Config, validated (ConfigError) and resolved for training, each change
  the resolution made logged."""
  config = config_from_flags(flag_values)
  config_lib.validate(config)
  config, notes = config_lib.resolve(config)
  for note in notes:
    logging.info('%s', note)
  return config


def parsed_flags(argv: list[str]) -> flags.FlagValues:
  """The training flags, in their own FlagValues, parsed from command-line style arguments."""
  flag_values = flags.FlagValues()
  define_flags(flag_values)
  flag_values(['ssgan_jax'] + list(argv))
  return flag_values


def parse_config(argv: list[str]) -> tuple[config_lib.Config, str]:
  """(Config, workdir) from command-line style arguments, for scripts that reuse the flags."""
  flag_values = parsed_flags(argv)
  return config_from_flags(flag_values), flag_values.workdir


def fail(message: str, exit_code: int = 2) -> typing.NoReturn:
  """Reports one line on stderr and exits (2: bad input)."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(exit_code)


def require_workdir(argv: list[str], allow_arguments: bool = False) -> str:
  """FLAGS.workdir, after refusing stray arguments (unless allowed) and a missing --workdir."""
  if len(argv) > 1 and not allow_arguments:
    fail(f'unexpected arguments: {" ".join(argv[1:])}')
  if not flags.FLAGS.workdir:
    fail('--workdir is required')
  return flags.FLAGS.workdir


class ChatterFilter(py_logging.Filter):
  """Keeps warnings and errors, and ssgan_jax's (and benchmarks') own lines; drops other
  libraries' informational lines (clu's parameter tables and scalar lines, TFDS, Orbax,
  JAX's backend notices)."""

  _OWN = (os.sep + 'ssgan_jax' + os.sep, os.sep + 'benchmarks' + os.sep)
  # Warnings that restate a choice of ssgan_jax's (evaluate and predict read checkpoints
  # read-only), not something for the user to act on.
  _EXPECTED = ('Given directory is read only',)

  def filter(self, record: py_logging.LogRecord) -> bool:
    if any(p in record.pathname for p in self._OWN):
      return True
    return (record.levelno >= py_logging.WARNING
            and not str(record.msg).startswith(self._EXPECTED))


class _PlainFormatter(py_logging.Formatter):
  """Informational lines as they are; others prefixed with their level ('WARNING: ...')."""

  def format(self, record: py_logging.LogRecord) -> str:
    message = super().format(record)
    return message if record.levelno == py_logging.INFO else f'{record.levelname}: {message}'


def setup_logging(verbose: bool) -> None:
  """Unless `verbose`: other libraries' chatter filtered, and lines without absl's prefix."""
  if not verbose:
    handler = logging.get_absl_handler()
    handler.addFilter(ChatterFilter())
    handler.setFormatter(_PlainFormatter('%(message)s'))


def _quiet_libraries_before_import() -> None:
  """TensorFlow's C++ start-up notices, which only an environment variable set before its
  import turns off (a user's own setting wins)."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def import_tensorflow_quietly() -> None:
  """Imports TensorFlow with the process's stderr held back (unless --verbose), showing what
  it printed only if the import fails: recent TensorFlow prints start-up notices through C++
  absl logging before any log level applies, so no setting hides them. For commands about to
  import it anyway (through TFDS or clu), after their flag checks; without TensorFlow
  installed, nothing happens."""
  if flags.FLAGS.verbose:
    return
  sys.stderr.flush()
  with tempfile.TemporaryFile() as captured:
    saved = os.dup(2)
    os.dup2(captured.fileno(), 2)
    try:
      import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      pass
    except Exception:
      os.dup2(saved, 2)
      captured.seek(0)
      sys.stderr.write(captured.read().decode(errors='replace'))
      raise
    finally:
      os.dup2(saved, 2)
      os.close(saved)


def run(main: Callable[[list[str]], None], usage: str,
        define: Callable[[], None] = define_flags) -> None:
  """Defines the flags, parses them (bad ones fail in one line; --help prints the groups),
  sets up logging and calls main(argv). Every entry point starts here."""
  define()

  def parse(argv: list[str]) -> list[str]:
    if any(arg in _HELP_ARGS for arg in argv[1:]):
      print(help_text(usage))
      sys.exit(0)
    remaining = parse_flags(argv)
    if not flags.FLAGS.verbose:
      _quiet_libraries_before_import()
    return remaining

  def main_with_logging(argv: list[str]) -> None:
    setup_logging(flags.FLAGS.verbose)
    xla_cpu.apply_entry_point_choice()
    main(argv)

  app.run(main_with_logging, flags_parser=parse)


def parse_flags(argv: list[str]) -> list[str]:
  """absl parsing, with bad flags reported in one line and exit code 2 (for scripts that
  call app.run themselves)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e).splitlines()[0])


def define_checkpoint_flags() -> None:
  """--workdir, --step and --verbose, for the commands that read a trained run."""
  flags.DEFINE_string('workdir', None, 'Workdir of a training run (required).')
  flags.DEFINE_integer('step', None, 'Checkpoint step; default: the newest.')
  define_output_flags()
