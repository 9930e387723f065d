"""How the benchmarks' tables report a quantity over several seeds (their headers say which
seeds varied: the labeled subset's, the run's, or both)."""
import math
import statistics
from typing import Optional

import numpy as np


def mean_std(percents) -> str:
  """'mean ± sample standard deviation (n - 1) %' of values in percent; one value has no spread."""
  if len(percents) == 1:
    return f'{percents[0]:.2f} %'
  return f'{np.mean(percents):.2f} ± {np.std(percents, ddof=1):.2f} %'


def two_standard_errors(values, baseline) -> Optional[float]:
  """Two standard errors of the difference between the means of two independent samples
  (each with its own sample variance); None when either has fewer than two values.

  A difference of means within it is what the tables call "within noise".
  """
  if len(values) < 2 or len(baseline) < 2:
    return None
  return 2 * math.sqrt(statistics.variance(values) / len(values)
                       + statistics.variance(baseline) / len(baseline))


def difference(values, baseline) -> tuple[float, Optional[float], Optional[bool]]:
  """Mean of `values` less the mean of `baseline`, two standard errors of it, and whether it
  is within them (None for both where a sample has fewer than two values)."""
  diff = statistics.mean(values) - statistics.mean(baseline)
  noise = two_standard_errors(values, baseline)
  return diff, noise, None if noise is None else abs(diff) <= noise
