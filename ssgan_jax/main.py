"""Train a semi-supervised GAN.

  python -m ssgan_jax.main --flagfile=experiments/mnist.flags --workdir=/tmp/mnist100

A flagfile sets any flag and the command line overrides it. The same command on the same
workdir resumes. Bad input exits with code 2 and one line on stderr. SIGTERM or Ctrl-C saves
a checkpoint at the current step and exits 0. The last line printed is a JSON summary.
"""
import json

from absl import flags, logging

from ssgan_jax.command_line import cli
from ssgan_jax import config as config_lib
from ssgan_jax.training import multihost, preemption
# For scripts that build a Config from flags the way this command does.
from ssgan_jax.command_line.cli import config_from_flags, define_flags, fail, parse_config  # pylint: disable=unused-import


def _as_int(name: str, value: str) -> int:
  """Launch flags are strings so that their defaults can come from the environment."""
  try:
    return int(value)
  except ValueError:
    raise config_lib.ConfigError(name, value, 'must be an integer') from None


def settings_summary(config: config_lib.Config, workdir: str) -> str:
  """The run's main settings in a few lines."""
  gan = (f'{config.unsup_loss} head, {config.gen_loss} generator loss'
         if config.mode == 'ssl' else 'labeled images only')
  return '\n'.join([
      f'data: {config.dataset}, {config.num_labeled} labels ({config.label_selection}, '
      f'label seed {config.label_seed}), {config.num_validation} held out for validation',
      f'model: {config.model}, {config.mode} ({gan}), {config.compute_dtype}',
      f'training: {config.num_steps} steps at batch {config.batch_size}, learning rate '
      f'{config.learning_rate}, EMA decay {config_lib.ema_decay(config):.6g}, seed {config.seed}',
      f'output: {workdir} (log every {config.log_every}, evaluate every {config.eval_every}, '
      f'checkpoint every {config.checkpoint_every} steps)'])


def main(argv: list[str]) -> None:
  workdir = cli.require_workdir(argv)
  try:
    config_lib.check_utf8('workdir', workdir)
    config = cli.resolved_config()
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
    logging.info('%s', settings_summary(config, workdir))
    # Imported here so that bad flags are reported without loading TensorFlow.
    cli.import_tensorflow_quietly()
    from ssgan_jax.training import train
    with preemption.stop_on_signals() as stop_requested:
      summary = train.train_and_evaluate(config, workdir, stop_requested)
  except config_lib.ConfigError as e:
    fail(str(e))
  except FloatingPointError as e:  # train.NonFiniteLossError: not bad input, a failed run.
    fail(str(e), exit_code=1)
  print(json.dumps(summary), flush=True)


if __name__ == '__main__':
  cli.run(main, __doc__)
