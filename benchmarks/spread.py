"""How the benchmarks' tables report a quantity over several seeds (their headers say which
seeds varied: the labeled subset's, the run's, or both)."""
import numpy as np


def mean_std(percents) -> str:
  """'mean ± sample standard deviation (n - 1) %' of values in percent; one value has no spread."""
  if len(percents) == 1:
    return f'{percents[0]:.2f} %'
  return f'{np.mean(percents):.2f} ± {np.std(percents, ddof=1):.2f} %'
