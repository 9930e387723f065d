"""SIGTERM and SIGINT ask the train loop to save a checkpoint at the current step and stop."""
import contextlib
import signal
from typing import Callable, Iterator

from absl import logging
import jax
from jax.experimental import multihost_utils


class StopRequest:
  """Called by the train loop once per step: True once a stop signal has arrived.

  Reading a Python flag costs nothing, so every step can ask. With several processes all
  must stop at the same step (the save is collective): there jax's preemption service,
  which handles SIGTERM itself, agrees on the step in the background.
  """

  def __init__(self):
    self.signal_name = None

  def handle(self, signum, frame) -> None:
    del frame
    self.signal_name = signal.Signals(signum).name
    logging.warning('%s: saving a checkpoint at the current step, then stopping; '
                    'rerun the same command to resume.', self.signal_name)

  def __call__(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.signal_name is not None


@contextlib.contextmanager
def stop_on_signals() -> Iterator[Callable[[int], bool]]:
  """Yields a StopRequest fed by SIGTERM and SIGINT; the previous handlers come back after.

  A second signal of the same kind gets the previous handler (a second Ctrl-C interrupts
  at once). With several processes, SIGINT keeps its default and SIGTERM is jax's.
  """
  request = StopRequest()
  if jax.process_count() > 1:
    yield request
    return
  previous = {}

  def handle(signum, frame):
    signal.signal(signum, previous[signum])
    request.handle(signum, frame)

  for signum in (signal.SIGTERM, signal.SIGINT):
    previous[signum] = signal.signal(signum, handle)
  try:
    yield request
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)
