"""What every accuracy benchmark records about how and where it ran."""
import datetime
import os
import platform
import sys

import jax


# x86 vector extensions, widest first: XLA:CPU compiles for the widest the host has, so they
# decide a CPU run's kernels, and with them its float rounding and its speed.
_VECTOR_EXTENSIONS = ('avx512f', 'avx2', 'avx', 'sse4_2')


def cpu_description(cpuinfo_path: str = '/proc/cpuinfo') -> str:
  """'model name, family F model M, widest vector extension' of the host CPU where Linux
  describes it (CPUs that share a model name can differ in the last two); else the platform's
  processor name."""
  try:
    with open(cpuinfo_path) as f:
      first_cpu = f.read().split('\n\n')[0]
  except OSError:
    return platform.processor() or platform.machine()
  fields = dict((k.strip(), v.strip()) for k, _, v in
                (line.partition(':') for line in first_cpu.splitlines()))
  flags = set(fields.get('flags', '').split())
  widest = next((e for e in _VECTOR_EXTENSIONS if e in flags), 'no AVX')
  return (f"{fields.get('model name', platform.machine())}, family {fields.get('cpu family', '?')} "
          f"model {fields.get('model', '?')}, {widest}")


def command_line() -> str:
  """This process's command line, as `python -m MODULE ...` when it was started that way."""
  spec = getattr(sys.modules['__main__'], '__spec__', None)
  program = ['-m', spec.name] if spec else sys.argv[:1]
  return ' '.join(['python', *program, *sys.argv[1:]])


def run_environment() -> dict:
  """The command line, date, machine and CPU, device, jax version and XLA flags of this run."""
  return {'command': command_line(),
          'date': datetime.date.today().isoformat(),
          'machine': platform.processor() or platform.machine(), 'cpu': cpu_description(),
          'cpu_count': os.cpu_count(),
          'devices': f'{jax.local_device_count()} x {jax.devices()[0].device_kind}',
          'jax': jax.__version__, 'xla_flags': os.environ.get('XLA_FLAGS', '')}
