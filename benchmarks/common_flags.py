"""The flags that several benchmarks share, defined once so that one process can import them
all, and `run`, the entry point every benchmark starts from.

Every benchmark writes under --out_dir, by default a folder per benchmark outside the
repository (~/ssgan_jax_benchmarks/NAME), so a benchmark run never changes the checkout.
"""
import os
from typing import Callable, Optional

from absl import app, flags

from ssgan_jax.command_line import cli
from ssgan_jax.config import ConfigError
from ssgan_jax.networks import xla_cpu

OUT_ROOT = os.path.join(os.path.expanduser('~'), 'ssgan_jax_benchmarks')

_OUT_DIR = flags.DEFINE_string('out_dir', None, f'Output folder (default: {OUT_ROOT}/NAME, NAME '
                               'being the benchmark).')
DATA_NPZ = flags.DEFINE_string('data_npz', None, 'Arrays from benchmarks/export_data.py instead '
                               'of TFDS (no TensorFlow needed).')
flags.register_validator(DATA_NPZ, lambda path: path is None or os.path.isfile(path),
                         'no such file')
TORCH_THREADS = flags.DEFINE_integer('torch_threads', 0, 'torch CPU threads (0: default).')
LABEL_SEEDS = flags.DEFINE_list('label_seeds', ['0', '1', '2'], "Seeds to train with: each is a "
                                "run's --label_seed and its --seed.")


def require_seed_list(flag: flags.FlagHolder) -> None:
  """Makes parsing refuse a list flag that is not non-negative integers."""
  flags.register_validator(flag, lambda seeds: bool(seeds) and all(s.isdigit() for s in seeds),
                           'must be non-negative integers, comma-separated')


require_seed_list(LABEL_SEEDS)


def out_dir(benchmark: str) -> str:
  """--out_dir, or the benchmark's default folder outside the repository."""
  return _OUT_DIR.value or os.path.join(OUT_ROOT, benchmark)


def run(main: Callable[[], None], argv: Optional[list[str]] = None) -> None:
  """Parses the flags and calls main() as the training command would: a bad flag, a stray
  argument or a ConfigError raised by main is reported in one line with exit code 2.

  XLA:CPU's kernel choice of the entry points is applied first. `argv` defaults to sys.argv.
  """
  def checked_main(args: list[str]) -> None:
    if len(args) > 1:
      cli.fail(f'unexpected arguments: {" ".join(args[1:])}')
    xla_cpu.apply_entry_point_choice()
    try:
      main()
    except ConfigError as e:
      cli.fail(str(e))

  app.run(checked_main, argv=argv, flags_parser=cli.parse_flags)
