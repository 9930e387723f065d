"""Training progress for a person watching: a tqdm bar on a terminal, log lines otherwise."""
import sys
import time

from absl import logging
import tqdm
import tqdm.contrib

# Shown metrics and their short names.
_SHOWN = {'disc_loss': 'D', 'gen_loss': 'G', 'train_accuracy': 'train', 'validation_accuracy': 'val'}


class Progress:
  """Steps/s, ETA, the latest losses and validation accuracy.

  On a terminal a progress bar; otherwise one log line every `every` steps; with `quiet`,
  nothing.
  """

  def __init__(self, num_steps: int, start_step: int, every: int, quiet: bool = False,
               stream=None):
    stream = stream or sys.stderr
    self.num_steps, self.start_step, self.every = num_steps, start_step, every
    self.quiet, self.latest = quiet, {}
    self._start = time.monotonic()
    self._bar = None
    self._log_handler = self._log_stream = None
    if not quiet and stream.isatty():
      self._bar = tqdm.tqdm(total=num_steps, initial=start_step, file=stream, unit='step',
                            dynamic_ncols=True)
      # Log lines are written above the bar (tqdm.write) instead of through it.
      self._log_handler = logging.get_absl_handler().python_handler
      self._log_stream = self._log_handler.stream
      self._log_handler.stream = tqdm.contrib.DummyTqdmFile(self._log_stream)

  def record(self, scalars: dict) -> None:
    """Keeps the newest values of the shown metrics."""
    self.latest.update({short: scalars[name] for name, short in _SHOWN.items() if name in scalars})
    if self._bar is not None:
      self._bar.set_postfix({k: f'{v:.3g}' for k, v in self.latest.items()}, refresh=False)

  def line(self, step: int) -> str:
    """One plain progress line for `step`."""
    done = step - self.start_step
    rate = done / max(time.monotonic() - self._start, 1e-9)
    eta = (self.num_steps - step) / rate if rate > 0 else float('inf')
    shown = ' '.join(f'{k} {v:.4g}' for k, v in self.latest.items())
    return (f'step {step}/{self.num_steps} ({100 * step / max(self.num_steps, 1):.0f}%), '
            f'{rate:.1f} steps/s, ETA {eta:.0f}s {shown}').rstrip()

  def update(self, step: int) -> None:
    """Call once per step, after the step's metrics are recorded."""
    if self._bar is not None:
      self._bar.update(step - self._bar.n)
    elif not self.quiet and (step % self.every == 0 or step == self.num_steps):
      logging.info('%s', self.line(step))

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._log_handler.stream = self._log_stream
