"""Published peak rates of common accelerators, for fraction-of-peak and roofline figures.

Dense (no sparsity) matrix rates per chip, and memory bandwidth. GPU figures are the SXM
parts' (PCIe parts are lower); float32 on GPUs is the plain (non tensor-core) rate. TPUs
publish no float32 rate: their matrix units run float32 as several bfloat16 passes.
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
  memory_bytes_per_s: float
  source: str

  def flops(self, dtype: str) -> Optional[float]:
    return self.bf16_flops if dtype == 'bfloat16' else self.fp32_flops


T, G = 1e12, 1e9
# Most specific match first (v5e before v5p).
PEAKS = (
    Peak('NVIDIA H200 SXM', 'H200', 989 * T, 67 * T, 4800 * G,
         'nvidia.com/en-us/data-center/h200 (datasheet; 1979 TFLOP/s bf16 is with sparsity)'),
    Peak('NVIDIA H100 SXM', 'H100', 989 * T, 67 * T, 3350 * G,
         'nvidia.com/en-us/data-center/h100 (datasheet; 1979 TFLOP/s bf16 is with sparsity)'),
    Peak('NVIDIA A100 SXM 80GB', 'A100', 312 * T, 19.5 * T, 2039 * G,
         'nvidia.com/en-us/data-center/a100 (datasheet; the 40GB part has 1555 GB/s)'),
    Peak('NVIDIA L4', r'\bL4\b', 121 * T, 30.3 * T, 300 * G,
         'nvidia.com/en-us/data-center/l4 (datasheet; 242 TFLOP/s bf16 is with sparsity)'),
    Peak('TPU v6e', 'TPU v6', 918 * T, None, 1640 * G, 'cloud.google.com/tpu/docs/v6e'),
    Peak('TPU v5e', r'TPU v5 ?(lite|e)', 197 * T, None, 819 * G, 'cloud.google.com/tpu/docs/v5e'),
    Peak('TPU v5p', r'TPU v5p?\b', 459 * T, None, 2765 * G, 'cloud.google.com/tpu/docs/v5p'),
    Peak('TPU v4', 'TPU v4', 275 * T, None, 1200 * G, 'cloud.google.com/tpu/docs/v4'),
)


def peak_for(device_kind: str) -> Optional[Peak]:
  """The table's entry for a jax device_kind, or None for an unknown device (e.g. a CPU)."""
  return next((p for p in PEAKS if re.search(p.match, device_kind, re.IGNORECASE)), None)


def markdown_table() -> str:
  rows = ['| device | bf16 TFLOP/s | fp32 TFLOP/s | memory GB/s | source |', '|---|---|---|---|---|']
  for p in PEAKS:
    fp32 = f'{p.fp32_flops / T:g}' if p.fp32_flops else 'n/a'
    rows.append(f'| {p.name} | {p.bf16_flops / T:g} | {fp32} | {p.memory_bytes_per_s / G:g} '
                f'| {p.source} |')
  return '\n'.join(rows)
