"""Orbax checkpoints of the train state, each saved with the config that made it."""
import dataclasses
import os
from typing import Any, Optional

import orbax.checkpoint as ocp

from ssgan_jax.config import Config, ConfigError, incompatible_fields


class Checkpointer:
  """Saves and restores `workdir/checkpoints/<step>/{state,config}`."""

  def __init__(self, workdir: str, config: Config):
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(n=config.keep_checkpoints),
            create=True),
        item_names=('state', 'config'))

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def check_compatible(self, config: Config) -> None:
    """Raises ConfigError if the newest checkpoint was made with settings that cannot resume."""
    step = self.latest_step()
    if step is None:
      return
    saved = self.manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))['config']
    differing = incompatible_fields(saved, config)
    if differing:
      current = dataclasses.asdict(config)
      changes = '; '.join(f'--{name}: checkpoint {saved.get(name)!r}, now {current[name]!r}'
                          for name in differing)
      raise ConfigError('workdir', os.path.dirname(self.directory),
                        f'holds a checkpoint (step {step}) made with other settings '
                        f'({changes}); use those settings or a new --workdir')

  def restore(self, abstract_state: Any) -> Any:
    """The newest state, shaped like `abstract_state`."""
    return self.manager.restore(self.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))['state']

  def save(self, step: int, state: Any, config: Config) -> None:
    """Saves asynchronously; `close` waits for it."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        config=ocp.args.JsonSave(dataclasses.asdict(config))))

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
