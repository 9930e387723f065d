"""Mixed precision: D and G compute in a lower dtype while parameters stay float32."""
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from ssgan_jax import models


def cast_floats(tree: Any, dtype) -> Any:
  """`tree` with every floating-point array cast to `dtype`; other leaves (ints, keys) kept."""
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x,
      tree)


@dataclasses.dataclass(frozen=True)
class ComputeIn:
  """A Flax module whose `apply` runs in `dtype`: variables and float inputs are cast down,
  float outputs (and updated collections) back to float32, so gradients reach float32
  parameters. `init` is the module's own, in float32.
  """
  module: Any
  dtype: Any

  def init(self, *args, **kwargs):
    return self.module.init(*args, **kwargs)

  def clone(self, **fields) -> 'ComputeIn':
    """The same wrapper around `module.clone(**fields)`."""
    return dataclasses.replace(self, module=self.module.clone(**fields))

  def apply(self, variables, *args, **kwargs):
    outputs = self.module.apply(cast_floats(variables, self.dtype),
                                *cast_floats(args, self.dtype), **kwargs)
    return cast_floats(outputs, jnp.float32)


def with_compute_dtype(family: models.ModelFamily, dtype_name: str) -> models.ModelFamily:
  """The family with D and G computing in `dtype_name` (float32 returns it unchanged)."""
  if dtype_name == 'float32':
    return family
  dtype = jnp.dtype(dtype_name)
  return dataclasses.replace(
      family,
      discriminator=lambda *args: ComputeIn(family.discriminator(*args), dtype),
      generator=lambda *args: ComputeIn(family.generator(*args), dtype))
