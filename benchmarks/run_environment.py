"""What every accuracy benchmark records about how and where it ran."""
import datetime
import os
import platform
import sys

import jax


def run_environment() -> dict:
  """The command line, date, machine, device, jax version and XLA flags of this run."""
  return {'command': ' '.join(['python'] + sys.argv),
          'date': datetime.date.today().isoformat(),
          'machine': platform.processor() or platform.machine(), 'cpu_count': os.cpu_count(),
          'devices': f'{jax.local_device_count()} x {jax.devices()[0].device_kind}',
          'jax': jax.__version__, 'xla_flags': os.environ.get('XLA_FLAGS', '')}
