"""Wall clock to test accuracy targets: the JAX trainer against the PyTorch reference.

Both train the flagfile's run from scratch on the same arrays, labeled subset and batches
(the JAX input pipeline's), evaluating test accuracy (config.eval_params) every --eval_every
steps, until every --targets is reached or --num_steps (the step cap) or --budget_s. Wall
clock runs from before the model is built to the evaluation that first reaches a target:
compilation, initialisation and the evaluations on the way included (the quantity a user
waits for; steps/s alone hides compile time and evaluation cost). At each point the other
parameters (raw weights beside the moving average, or the reverse) are evaluated too, with
the clock paused. Writes time_to_accuracy.json and .md under --out_dir as each trainer
finishes.

  taskset -c 0 python -m benchmarks.time_to_accuracy --flagfile=experiments/mnist.flags \
      --data_npz=mnist.npz --eval_every=500 --num_steps=20000 --torch_threads=1

Needs neither TensorFlow nor TFDS with --data_npz (benchmarks/export_data.py writes it).
"""
import contextlib
import dataclasses
import functools
import os
import time
from typing import Callable, Optional

from absl import flags
import jax

from benchmarks import common_flags, export_data, record_files
from benchmarks.run_environment import run_environment
from ssgan_jax import config as config_lib
from ssgan_jax.data import input_pipeline
from ssgan_jax.training import parallel, train
from ssgan_jax import main as ssgan_main

FRAMEWORKS = ('jax', 'torch')
FLAGS = flags.FLAGS


def define_flags() -> None:
  """The run's Config flags and this benchmark's (defined only when it is the program, so
  that benchmarks/device_run.py can import it)."""
  ssgan_main.define_flags()
  flags.DEFINE_list('targets', ['0.95', '0.97', '0.98'], 'Test accuracies to time.')
  flags.DEFINE_list('frameworks', list(FRAMEWORKS), 'Trainers to time.')
  flags.DEFINE_float('budget_s', 0, 'Wall-clock budget of each trainer (0: none).')


OTHER_PARAMS = {'ema': 'raw', 'raw': 'ema'}


class Clock:
  """Test accuracy against steps and wall seconds, and when each target was first reached.

  A curve point is (step, accuracy, wall seconds, the other parameters' accuracy); time spent
  in `paused` is not counted.
  """

  def __init__(self, targets: list[float], num_steps: int, deadline: float):
    self.targets, self.num_steps, self.deadline = sorted(targets), num_steps, deadline
    self.start, self.excluded = time.perf_counter(), 0.0
    self.curve, self.reached = [], {}

  @contextlib.contextmanager
  def paused(self):
    start = time.perf_counter()
    yield
    self.excluded += time.perf_counter() - start

  def seconds(self) -> float:
    return round(time.perf_counter() - self.start - self.excluded, 3)

  def evaluate(self, step: int, accuracy: Callable[[str], float], params: str) -> None:
    """Records `accuracy(params)` at `step`, and the other parameters' with the clock paused."""
    value = accuracy(params)
    with self.paused():
      other = accuracy(OTHER_PARAMS[params])
    self.record(step, value, other)

  def record(self, step: int, accuracy: float, other_accuracy: float) -> None:
    wall = self.seconds()
    self.curve.append((step, accuracy, wall, other_accuracy))
    for target in self.targets:
      if accuracy >= target and target not in self.reached:
        self.reached[target] = {'step': step, 'wall_s': wall}

  def running(self, step: int) -> bool:
    return (step < self.num_steps and len(self.reached) < len(self.targets)
            and time.perf_counter() < self.deadline)

  def result(self, step: int) -> dict:
    stop = ('targets reached' if len(self.reached) == len(self.targets) else
            'step cap' if step >= self.num_steps else 'budget')
    return {'reached': {str(t): self.reached.get(t) for t in self.targets}, 'steps': step,
            'stopped_by': stop, 'wall_s': self.seconds(), 'curve': self.curve}


def time_jax(config: config_lib.Config, data: tuple, clock: Clock) -> dict:
  """The JAX trainer (train.train_step on all local devices) until `clock` stops it."""
  info, arrays = data
  with jax.default_matmul_precision(config.matmul_precision):
    setup = train.Setup.create(config, info)
    init_images = arrays.unlabeled_images if config.mode == 'ssl' else arrays.labeled_images
    trainer = parallel.DataParallelTrainer(functools.partial(train.train_step, setup), config,
                                           arrays, train.AXIS)
    state = trainer.replicate(train.create_train_state(setup, init_images[:train.INIT_BATCH_SIZE]))
    evaluator = train.Evaluator(setup, trainer)
    chunks, step = trainer.chunks(0), 0
    while clock.running(step):
      state, _ = trainer(state, next(chunks))
      step += trainer.steps_in_call(step)
      if step % config.eval_every == 0 or step == config.num_steps:
        clock.evaluate(step, lambda which: evaluator.accuracy(
            state, arrays.test_images, arrays.test_labels, which), config.eval_params)
  return clock.result(step)


def time_torch(config: config_lib.Config, data: tuple, clock: Clock, device: str) -> dict:
  """The PyTorch reference on the same batches until `clock` stops it."""
  from benchmarks.torch_reference.train import TorchTrainer, match_jax_precision  # pylint: disable=g-import-not-at-top
  info, arrays = data
  precision = match_jax_precision(config.matmul_precision, device)
  init_images = arrays.unlabeled_images if config.mode == 'ssl' else arrays.labeled_images
  trainer = TorchTrainer(config, info.num_classes, info.image_shape, init_images, device=device)
  batches = input_pipeline.train_batches(arrays, config, 0, num_devices=1)
  step = 0
  while clock.running(step):
    trainer.train_step({k: v[0] for k, v in next(batches).items()})
    step += 1
    if step % config.eval_every == 0 or step == config.num_steps:
      clock.evaluate(step, lambda which: trainer.accuracy(
          arrays.test_images, arrays.test_labels, which), config.eval_params)
  return {**clock.result(step), **precision}


def ratios(runs: dict) -> dict:
  """torch wall seconds / JAX wall seconds per target both reached."""
  if not {'jax', 'torch'} <= set(runs):
    return {}
  out = {}
  for target, jax_hit in runs['jax']['reached'].items():
    torch_hit = runs['torch']['reached'].get(target)
    out[target] = (round(torch_hit['wall_s'] / jax_hit['wall_s'], 3)
                   if jax_hit and torch_hit else None)
  return out


def markdown(record: dict) -> str:
  """Steps and wall seconds to each target, per trainer, and the torch/JAX ratio."""
  config, runs = record['config'], record['runs']
  params, other = config['eval_params'], OTHER_PARAMS[config['eval_params']]
  targets = next(iter(runs.values()))['reached'] if runs else {}
  rows = [f"{config['dataset']}, {config['num_labeled']} labels, batch {config['batch_size']}, "
          f"evaluated every {config['eval_every']} steps, step cap {config['num_steps']}, "
          f"{config['compute_dtype']} at matmul precision {config['matmul_precision']}; "
          f"{record['environment']['devices']}, jax {record['environment']['jax']}. "
          f"Command: `{record['environment']['command']}`", '',
          f'Targets are timed with the {params} parameters.', '',
          '| trainer | ' + ' | '.join(f'to {100 * float(t):g} %: step, wall s' for t in targets)
          + f' | stopped by | last test accuracy, {params} | last, {other} | best, {params} |'
          f' best, {other} |',
          '|---|' + '---|' * len(targets) + '---|---|---|---|---|']
  percent = lambda a: 'n/a' if a is None else f'{100 * a:.2f} %'
  for name, run in runs.items():
    cells = [f"{hit['step']}, {hit['wall_s']:.1f}" if hit else
             f"not reached by step {run['steps']}" for hit in run['reached'].values()]
    last = run['curve'][-1] if run['curve'] else (None,) * 4
    best = [max((point[i] for point in run['curve']), default=None) for i in (1, 3)]
    rows.append(f"| {name} ({run['device']}) | " + ' | '.join(cells) +
                f" | {run['stopped_by']} | {percent(last[1])} | {percent(last[3])} | "
                f"{percent(best[0])} | {percent(best[1])} |")
  if record['torch_over_jax']:
    rows += ['', 'torch wall s / JAX wall s: ' + ', '.join(
        f"to {100 * float(t):g} % {r:.2f}x" if r else f"to {100 * float(t):g} % n/a"
        for t, r in record['torch_over_jax'].items())]
  return '\n'.join(rows) + '\n'


def run(config: config_lib.Config, splits: dict, targets: list[float], frameworks: list[str],
        budget_s: float, out_dir: str, name: str = 'time_to_accuracy',
        torch_device: Optional[str] = None) -> dict:
  """Times each framework in turn; writes <name>.json and .md after each; returns the record."""
  data = export_data.semi_supervised_data(config, splits)
  on_gpu = jax.devices()[0].platform == 'gpu'
  record = {'benchmark': 'time_to_accuracy', 'environment': run_environment(),
            'config': dataclasses.asdict(config), 'runs': {}, 'torch_over_jax': {}}
  os.makedirs(out_dir, exist_ok=True)
  for framework in frameworks:
    clock = Clock(targets, config.num_steps,
                  time.perf_counter() + budget_s if budget_s else float('inf'))
    if framework == 'jax':
      result = {**time_jax(config, data, clock), 'device': jax.devices()[0].device_kind}
    else:
      import torch  # pylint: disable=g-import-not-at-top
      device = torch_device or ('cuda' if on_gpu and torch.cuda.is_available() else 'cpu')
      result = {**time_torch(config, data, clock, device), 'device': device,
                'torch': torch.__version__, 'torch_threads': torch.get_num_threads()}
    record['runs'][framework] = result
    record['torch_over_jax'] = ratios(record['runs'])
    record_files.save(os.path.join(out_dir, name), record, markdown(record))
  return record


def check_flags(config: config_lib.Config) -> list[float]:
  """The targets; raises ConfigError for the first bad flag."""
  config_lib.validate(config)
  unknown = set(FLAGS.frameworks) - set(FRAMEWORKS)
  if unknown or not FLAGS.frameworks:
    raise config_lib.ConfigError('frameworks', ','.join(FLAGS.frameworks),
                                 f'allowed: {", ".join(FRAMEWORKS)}')
  try:
    targets = [float(t) for t in FLAGS.targets]
  except ValueError:
    targets = []
  if not targets or not all(0 <= t <= 1 for t in targets):
    raise config_lib.ConfigError('targets', ','.join(FLAGS.targets),
                                 'must be accuracies in [0, 1], comma-separated')
  return targets


def main():
  config = ssgan_main.config_from_flags()
  targets = check_flags(config)
  splits = export_data.read_data(config)
  if common_flags.TORCH_THREADS.value:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(common_flags.TORCH_THREADS.value)
  record = run(config, splits, targets, FLAGS.frameworks, FLAGS.budget_s,
               common_flags.out_dir('time_to_accuracy'))
  print(markdown(record))


if __name__ == '__main__':
  define_flags()
  common_flags.run(main)
