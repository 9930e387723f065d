"""Orbax checkpoints of the train state, each saved with the config that made it.

Orbax writes each checkpoint into a temporary folder and renames it when complete, and
lists only complete ones, so a process killed during a save leaves the newest complete
checkpoint to resume from (Orbax ignores the incomplete folder). A checkpoint that cannot
be read is reported, never replaced.
"""
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from ssgan_jax.config import Config, ConfigError, check_schedule_kept, incompatible_fields

DATASET_INFO_FILE = 'dataset_info.json'


class Checkpointer:
  """Saves and restores `workdir/checkpoints/<step>/{state,config}`."""

  def __init__(self, workdir: str, config: Config, read_only: bool = False):
    """`read_only`: for reading a run (evaluate, predict), which works on a workdir that
    cannot be written."""
    self.workdir = workdir
    if not read_only:
      check_writable(workdir)
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(n=config.keep_checkpoints),
            # The first save makes the folder: a refused run leaves no empty one.
            create=False, read_only=read_only,
            # What Orbax sets for a read-only manager anyway, with a warning if not given.
            **({'save_interval_steps': 0} if read_only else {})),
        item_names=('state', 'config'))

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def restore_config(self, step: int) -> dict:
    """The config saved with the checkpoint at `step`, as a dict."""
    return self.manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))['config']

  def _unreadable(self, step: int, error: Exception) -> ConfigError:
    reason = (str(error).strip().splitlines() or [''])[0][:200]
    return ConfigError('workdir', self.workdir,
                       f'checkpoint {os.path.join(self.directory, str(step))} cannot be read '
                       f'({type(error).__name__}: {reason}); move it away to resume from an '
                       'earlier one, or use a new --workdir')

  def saved_config(self) -> Optional[dict]:
    """The config saved with the newest checkpoint (None without one); ConfigError if it
    cannot be read."""
    step = self.latest_step()
    if step is None:
      return None
    try:
      saved = self.restore_config(step)
    except Exception as e:  # Orbax and JSON raise many kinds; all mean unreadable.
      raise self._unreadable(step, e) from None
    return saved

  def check_compatible(self, config: Config) -> None:
    """Raises ConfigError if the newest checkpoint was made with settings that cannot resume,
    or if config's num_steps would change the learning rate of steps it has taken."""
    saved = self.saved_config()
    if saved is None:
      return
    step = self.latest_step()
    differing = incompatible_fields(saved, config)
    if differing:
      current = dataclasses.asdict(config)
      changes = '; '.join(f'--{name}: checkpoint {saved.get(name)!r}, now {current[name]!r}'
                          for name in differing)
      raise ConfigError('workdir', self.workdir,
                        f'holds a checkpoint (step {step}) made with other settings '
                        f'({changes}); use those settings or a new --workdir')
    check_schedule_kept(saved, config, step)

  def restore(self, template: Any, step: Optional[int] = None) -> Any:
    """The newest (or the given step's) state, shaped like `template` (host arrays).

    Raises ConfigError if the checkpoint cannot be read into that shape.
    """
    step = self.latest_step() if step is None else step
    try:
      with _quiet_unfinished_reads():
        state = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(template)))['state']
      if jax.tree.structure(state) != jax.tree.structure(template):
        raise ValueError('its state has another structure than this model\'s')
      for restored, expected in zip(jax.tree.leaves(state), jax.tree.leaves(template)):
        if restored.shape != expected.shape or restored.dtype != expected.dtype:
          raise ValueError(f'an array of shape {restored.shape} {restored.dtype} where this '
                           f'model has {expected.shape} {expected.dtype}')
    except Exception as e:  # Orbax and TensorStore raise many kinds; all mean unreadable.
      raise self._unreadable(step, e) from None
    return state

  def save(self, step: int, state: Any, config: Config) -> None:
    """Saves asynchronously; `close` waits for it.

    Host (numpy) arrays: with several processes Orbax writes them from process 0 only.
    """
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(jax.device_get(state)),
        config=ocp.args.JsonSave(dataclasses.asdict(config))))

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _dropping_closed_loop_errors(hook):
  def drop(unraisable) -> None:
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == 'Event loop is closed'):
      hook(unraisable)
  return drop


@contextlib.contextmanager
def _quiet_unfinished_reads():
  """When one read of a damaged checkpoint fails, Orbax closes its event loop while
  TensorStore's other reads are in flight; each then reports 'Event loop is closed' as it
  ends, possibly before the failure reaches this frame. Those reports are dropped from the
  start of the restore and, if it fails, for the rest of the process: the failed read is
  what matters, and it is raised."""
  hook = sys.unraisablehook
  sys.unraisablehook = _dropping_closed_loop_errors(hook)
  yield
  sys.unraisablehook = hook


def write_dataset_info(workdir: str, info: Any) -> None:
  """Saves the DatasetInfo dataclass `info` (all its fields) as workdir/dataset_info.json, so
  that a run can be used without its dataset (process 0 writes it; atomic)."""
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, DATASET_INFO_FILE)
  with open(path + '.tmp', 'w') as f:
    json.dump(dataclasses.asdict(info), f, indent=1)
  os.replace(path + '.tmp', path)


def read_dataset_info(workdir: str) -> Optional[dict]:
  """The fields write_dataset_info saved (lists as tuples), or None for a workdir without them."""
  path = os.path.join(workdir, DATASET_INFO_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in json.load(f).items()}


def check_writable(workdir: str) -> None:
  """Raises ConfigError unless workdir exists or can be made, and takes new files."""
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.TemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise ConfigError('workdir', workdir,
                      f'must be a writable directory ({e.strerror or type(e).__name__})') from None
