"""Where a run's metrics go: metrics.jsonl, the metric writer (TensorBoard) and the progress bar.

metrics.jsonl holds no metric twice for one step: a resumed run first drops the records of
the steps it redoes, and a rerun of a finished run drops the end-of-run record it writes again.
The end-of-run record of a run that is later extended stays: it is that step's test result.
"""
import json
import os

from absl import logging
from etils import epy

from ssgan_jax.training import multihost, progress
from ssgan_jax.config import Config

# Lazy: clu's metric writers import TensorFlow, which training does not otherwise need.
with epy.lazy_imports():
  from clu import metric_writers

# The cumulative wall time of the run, in metrics.jsonl's records (not shown elsewhere): up to
# a train metrics record, and up to the end-of-run record.
TRAIN_SECONDS, TOTAL_SECONDS = 'train_seconds_total', 'wall_seconds_total'


class LogOnlyWriter:
  """Scalars as log lines: the writer where clu's, which needs TensorFlow, cannot load."""

  def write_scalars(self, step: int, scalars: dict) -> None:
    logging.info('[%d] %s', step, ', '.join(f'{k}={v:.6g}' for k, v in scalars.items()))

  def write_images(self, step: int, images: dict) -> None:
    del step, images  # the PNGs beside the metrics hold them

  def close(self) -> None:
    pass


def metric_writer(workdir: str):
  """clu's writer: TensorBoard events in `workdir` (writing host only) and log lines. Without
  TensorFlow (as on a machine that reads a numpy export of the data), log lines only;
  metrics.jsonl holds every metric either way."""
  try:
    return metric_writers.create_default_writer(workdir,
                                                just_logging=not multihost.is_writer())
  except ImportError as e:
    logging.warning('No TensorBoard events: %s. metrics.jsonl has every metric.', e)
    return LogOnlyWriter()


def _readable_records(path: str) -> tuple[list[dict], int]:
  """The records of a metrics.jsonl, and how many lines before the last could not be read
  (not UTF-8 JSON). A last line that cannot be read is a write that a kill cut short."""
  with open(path, 'rb') as f:
    lines = f.read().splitlines()
  records, garbled = [], 0
  for i, line in enumerate(lines):
    try:
      record = json.loads(line.decode('utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError):
      record = None
    if isinstance(record, dict) and isinstance(record.get('step'), int):
      records.append(record)
    elif i < len(lines) - 1:
      garbled += 1
  return records, garbled


def keep_records_up_to(path: str, step: int, num_steps: int) -> float:
  """Drops the records after `step` (a resumed run redoes those steps), the end-of-run record
  at `step` when the run ends there again (`num_steps == step`: it is written again) and every
  line that cannot be read; returns the training wall time recorded up to `step` (0 without
  one)."""
  if not os.path.exists(path):
    return 0.0
  records, garbled = _readable_records(path)
  if garbled:
    logging.warning('%s: skipped %d lines that are not UTF-8 JSON records.', path, garbled)
  rerun = num_steps == step
  kept = [r for r in records
          if r['step'] < step or (r['step'] == step and not (rerun and 'test_accuracy' in r))]
  with open(path + '.tmp', 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in kept)
  os.replace(path + '.tmp', path)
  return max((r.get(TRAIN_SECONDS, r.get(TOTAL_SECONDS, 0.0)) for r in records
              if r['step'] <= step), default=0.0)


class MetricsRecorder:
  """A run's metrics to metrics.jsonl (writing host only), the metric writer and the bar."""

  def __init__(self, workdir: str, config: Config, start_step: int):
    self.workdir = workdir
    self.path = os.path.join(workdir, 'metrics.jsonl')
    # Training wall time of the earlier invocations that made the state resumed from.
    self.earlier_train_seconds = (keep_records_up_to(self.path, start_step, config.num_steps)
                                  if multihost.is_writer() else 0.0)
    self.writer = metric_writer(workdir)
    self.bar = progress.Progress(config.num_steps, start_step, config.log_every, config.quiet)

  def write(self, step: int, scalars: dict, file_only: dict = None) -> None:
    """Writes scalars everywhere, and `file_only` to metrics.jsonl alone."""
    self.writer.write_scalars(step, scalars)
    self.bar.record(scalars)
    if multihost.is_writer():
      with open(self.path, 'a') as f:
        f.write(json.dumps({'step': step, **scalars, **(file_only or {})}) + '\n')

  def update(self, step: int) -> None:
    self.bar.update(step)

  def close(self) -> None:
    self.bar.close()
    self.writer.close()
