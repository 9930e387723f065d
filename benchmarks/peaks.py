"""Published peak rates of common accelerators, for fraction-of-peak and roofline figures.

Dense (no sparsity) matrix rates per chip, and memory bandwidth. GPU figures are the SXM
parts' (PCIe parts are lower). float32 on GPUs runs at the TF32 tensor-core rate at JAX's
'default' and 'high' matmul precision and at the plain (non tensor-core) fp32 rate at
'highest'. TPUs publish no float32 rate: their matrix units run float32 as 1, 3 or 6 bfloat16
passes at 'default', 'high' and 'highest' (XLA's bf16, bf16_3x and bf16_6x algorithms).
"""
import dataclasses
import re
from typing import Optional


@dataclasses.dataclass(frozen=True)
class Peak:
  name: str
  match: str                     # regular expression found in jax's device_kind
  bf16_flops: float              # FLOP/s
  fp32_flops: Optional[float]    # FLOP/s; None where not published
  tf32_flops: Optional[float]    # FLOP/s; None where the device has no TF32
  memory_bytes_per_s: float
  source: str

  def rate(self, dtype: str, precision: str = 'default') -> tuple[str, Optional[float]]:
    """(name, FLOP/s) of the matrix rate that `dtype` runs at under JAX's matmul `precision`."""
    if dtype == 'bfloat16':
      return 'bf16', self.bf16_flops
    if self.tf32_flops:
      return ('fp32', self.fp32_flops) if precision == 'highest' else ('tf32', self.tf32_flops)
    if self.fp32_flops:
      return 'fp32', self.fp32_flops
    passes = _BF16_PASSES[precision]
    return (f'bf16_{passes}x' if passes > 1 else 'bf16'), self.bf16_flops / passes

  def flops(self, dtype: str, precision: str = 'default') -> Optional[float]:
    return self.rate(dtype, precision)[1]


_BF16_PASSES = {'default': 1, 'high': 3, 'highest': 6}


T, G = 1e12, 1e9
# Most specific match first (v5e before v5p).
PEAKS = (
    Peak('NVIDIA H200 SXM', 'H200', 989 * T, 67 * T, 495 * T, 4800 * G,
         'nvidia.com/en-us/data-center/h200 (datasheet; 1979 bf16 and 989 TF32 are with sparsity)'),
    Peak('NVIDIA H100 SXM', 'H100', 989 * T, 67 * T, 495 * T, 3350 * G,
         'nvidia.com/en-us/data-center/h100 (datasheet; 1979 bf16 and 989 TF32 are with sparsity)'),
    Peak('NVIDIA A100 SXM 80GB', 'A100', 312 * T, 19.5 * T, 156 * T, 2039 * G,
         'nvidia.com/en-us/data-center/a100 (datasheet; 312 TF32 is with sparsity; the 40GB part has 1555 GB/s)'),
    Peak('NVIDIA L4', r'\bL4\b', 121 * T, 30.3 * T, 60 * T, 300 * G,
         'nvidia.com/en-us/data-center/l4 (datasheet; 242 bf16 and 120 TF32 are with sparsity)'),
    Peak('TPU v6e', 'TPU v6', 918 * T, None, None, 1640 * G, 'cloud.google.com/tpu/docs/v6e'),
    Peak('TPU v5e', r'TPU v5 ?(lite|e)', 197 * T, None, None, 819 * G, 'cloud.google.com/tpu/docs/v5e'),
    Peak('TPU v5p', r'TPU v5p?\b', 459 * T, None, None, 2765 * G, 'cloud.google.com/tpu/docs/v5p'),
    Peak('TPU v4', 'TPU v4', 275 * T, None, None, 1200 * G, 'cloud.google.com/tpu/docs/v4'),
)


def peak_for(device_kind: str) -> Optional[Peak]:
  """The table's entry for a jax device_kind, or None for an unknown device (e.g. a CPU)."""
  return next((p for p in PEAKS if re.search(p.match, device_kind, re.IGNORECASE)), None)


def markdown_table() -> str:
  rows = ['| device | bf16 TFLOP/s | tf32 TFLOP/s | fp32 TFLOP/s | memory GB/s | source |',
          '|---|---|---|---|---|---|']
  tflops = lambda flops: f'{flops / T:g}' if flops else 'n/a'
  for p in PEAKS:
    rows.append(f'| {p.name} | {p.bf16_flops / T:g} | {tflops(p.tf32_flops)} '
                f'| {tflops(p.fp32_flops)} | {p.memory_bytes_per_s / G:g} | {p.source} |')
  return '\n'.join(rows)
