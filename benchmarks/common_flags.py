"""The flags that several benchmarks share, defined once so that one process can import them all.

Every benchmark writes under --out_dir, by default a folder per benchmark outside the
repository (~/ssgan_jax_benchmarks/NAME), so a benchmark run never changes the checkout.
"""
import os

from absl import flags

OUT_ROOT = os.path.join(os.path.expanduser('~'), 'ssgan_jax_benchmarks')

_OUT_DIR = flags.DEFINE_string('out_dir', None, f'Output folder (default: {OUT_ROOT}/NAME, NAME '
                               'being the benchmark).')
DATA_NPZ = flags.DEFINE_string('data_npz', None, 'Arrays from benchmarks/export_data.py instead '
                               'of TFDS (no TensorFlow needed).')
TORCH_THREADS = flags.DEFINE_integer('torch_threads', 0, 'torch CPU threads (0: default).')
LABEL_SEEDS = flags.DEFINE_list('label_seeds', ['0', '1', '2'], "Seeds to train with: each is a "
                                "run's --label_seed and its --seed.")


def out_dir(benchmark: str) -> str:
  """--out_dir, or the benchmark's default folder outside the repository."""
  return _OUT_DIR.value or os.path.join(OUT_ROOT, benchmark)
