"""Every accelerator row in one call: `python -m benchmarks.device_run --out_dir=DIR`.

Parts, in this order, each written to DIR/part_<key>.json and .md as soon as it is measured
(a call cut short returns what it finished), then DIR/device_run.md with all of them:
  a. conv_small (SVHN) at batch 100: JAX against torch eager and torch.compile, torch at the
     matmul precision JAX runs at;
  b. conv_small and conv_large (CIFAR-10) at batch 1024, float32 and bfloat16: steps/s,
     achieved TFLOP/s, and the fraction of the bf16 matmul rate measured in the same run;
  c. the MNIST MLP at batch 100: steps per dispatch 1 and 10, data on device off and on;
  d. XLA's own transposed-convolution and gradient algorithms against the hand-written ones;
  e. MNIST-100 time to accuracy of the JAX trainer from scratch (--data_npz), to 98 % and
     then 99 % test accuracy within the budget left, compile included;
  f. the ResNet-18 model (cats vs dogs) at 224 px, batch 64, against the torch reference.
A part starts only while --budget_s has time left. jax.devices() decides the platform; the
torch parts run on CUDA or CPU where torch is installed. Needs neither TensorFlow, TFDS nor
clu. --smoke runs every part on CPU with the MLP (the ResNet-18 at 32 px), tiny batches and
data (the test suite's check that the call is ready). docs/gpu_tpu.md is the runbook.
"""
import dataclasses
import importlib.util
import os
import time
from typing import Callable, Optional

from absl import flags
import jax
import numpy as np

from benchmarks import throughput, time_to_accuracy
from benchmarks import common_flags, export_data, record_files
from ssgan_jax import config as config_lib, main as ssgan_main

FLAGS = flags.FLAGS
_BUDGET_S = flags.DEFINE_float('budget_s', 480, 'Wall-clock seconds after which no part starts.')
_SMOKE = flags.DEFINE_boolean('smoke', False, 'Every part on CPU with the MLP, tiny batches and '
                              'data, one timed step.')
_PRECISION = flags.DEFINE_enum('matmul_precision', 'default', config_lib.MATMUL_PRECISIONS,
                               "JAX's matmul precision of every part (torch matched on CUDA).")

XLA_S = ('conv_transpose=dilated,conv_input_gradient=dilated,conv_kernel_gradient=xla,'
         'conv_tiny_maps=xla')
HAND_WRITTEN = ('conv_transpose=phases,conv_input_gradient=phases',
                'conv_transpose=subpixel,conv_input_gradient=subpixel',
                'conv_kernel_gradient=patches')


@dataclasses.dataclass(frozen=True)
class TimingPart:
  """Cases of benchmarks/throughput.py timed in one round-robin."""
  key: str
  title: str
  cases: tuple          # (model, global batch, variant)
  torch_modes: tuple = ()
  matmul_peaks: bool = False
  smoke_cases: tuple = ()   # what --smoke times instead (it checks every case's config)


# --smoke times the MLP (it compiles in seconds) at batch 4, one case a part.
TIMING_PARTS = (
    TimingPart('a', 'SVHN model, batch 100: JAX against the PyTorch reference',
               (('conv_small', 100, ''),), ('eager', 'compile'), smoke_cases=(('mlp', 4, ''),)),
    TimingPart('b', 'SVHN and CIFAR-10 models, batch 1024, float32 and bfloat16',
               tuple((model, 1024, variant) for model in ('conv_small', 'conv_large')
                     for variant in ('', 'compute_dtype=bfloat16')), matmul_peaks=True,
               smoke_cases=(('mlp', 4, 'compute_dtype=bfloat16'),)),
    TimingPart('c', 'MNIST MLP, batch 100: steps per dispatch and data on device',
               tuple(('mlp', 100, f'steps_per_dispatch={k},data_on_device={on}')
                     for k in (1, 10) for on in ('false', 'true')),
               smoke_cases=(('mlp', 4, 'steps_per_dispatch=2,data_on_device=true'),)),
    TimingPart('d', "SVHN model, batch 100: XLA's own against the hand-written algorithms",
               tuple(('conv_small', 100, variant) for variant in (XLA_S, *HAND_WRITTEN)),
               smoke_cases=(('mlp', 4, HAND_WRITTEN[0]),)),
)
RESNET = TimingPart('f', 'ResNet-18 at 224 px, batch 64: JAX against the PyTorch reference',
                    (('resnet18', 64, ''),), ('eager', 'compile'),
                    smoke_cases=(('resnet18', 2, 'image_size=32'),))
# (steps, warmup, repeats) of a timed case.
TIMING = (20, 5, 3)
SMOKE_TIMING = (1, 0, 1)
TTA_TARGETS = (0.98, 0.99)
TTA_FLAGS = ('--eval_every=500', '--steps_per_dispatch=10', '--data_on_device')
SMOKE_TTA_FLAGS = ('--eval_every=2', '--num_steps=4', '--num_labeled=20', '--num_validation=0',
                   '--batch_size=10', '--eval_batch_size=50')


def with_precision(variant: str, precision: str) -> str:
  return ','.join(item for item in (variant, f'matmul_precision={precision}') if item)


def run_timing_part(part: TimingPart, smoke: bool, precision: str) -> dict:
  """The part's cases (and torch reference beside the first) timed round-robin."""
  steps, warmup, repeats = SMOKE_TIMING if smoke else TIMING
  devices = jax.local_devices()[:1]
  if smoke:
    for model, batch, variant in part.cases:
      config_lib.validate(throughput.model_config(
          model, batch, throughput.parse_variant(with_precision(variant, precision))))
  specs = part.smoke_cases if smoke else part.cases
  cases = [throughput.Case(model, batch, devices, with_precision(variant, precision))
           for model, batch, variant in specs]
  torch_modes = part.torch_modes[:1] if smoke else part.torch_modes  # torch.compile: minutes
  torch_cases = ([throughput.TorchCase(cases[0], mode) for mode in torch_modes]
                 if importlib.util.find_spec('torch') and devices[0].platform in ('cpu', 'gpu')
                 else [])
  throughput.interleaved(cases + torch_cases, warmup, repeats, steps)
  records = [case.record() for case in cases]
  records += [t.record(records[0]) for t in torch_cases]
  if part.matmul_peaks:
    records += throughput.matmul_peaks(records, 64 if smoke else 0)
  header = throughput.run_header('device_run', steps, warmup, repeats)
  return {'records': records, 'markdown': throughput.markdown(header, records)}


def smoke_splits() -> dict:
  """Random 28x28 'mnist' arrays in export_data's layout."""
  rng = np.random.default_rng(0)
  images = lambda n: rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
  return {'dataset': 'mnist', 'num_classes': 10, 'train_images': images(200),
          'train_labels': np.arange(200) % 10, 'test_images': images(50),
          'test_labels': np.arange(50) % 10}


def run_time_to_accuracy(out_dir: str, smoke: bool, precision: str, budget_s: float,
                         data_npz: Optional[str]) -> dict:
  """Part e: benchmarks/time_to_accuracy.py's JAX run on MNIST-100."""
  if smoke:
    splits = smoke_splits()
  elif data_npz:
    splits = export_data.read_npz(data_npz)
  else:
    return {'skipped': 'no --data_npz (benchmarks/export_data.py writes it)'}
  config, _ = ssgan_main.parse_config(
      [f'--flagfile={os.path.join(throughput.REPO, "experiments", "mnist.flags")}',
       f'--matmul_precision={precision}', *(SMOKE_TTA_FLAGS if smoke else TTA_FLAGS)])
  record = time_to_accuracy.run(config, splits, list(TTA_TARGETS), ['jax'], budget_s, out_dir,
                                name='part_e_time_to_accuracy')
  return {'records': [record], 'markdown': time_to_accuracy.markdown(record)}


def write_part(out_dir: str, key: str, title: str, result: dict) -> str:
  """Writes part_<key>.json and .md; returns the markdown."""
  text = f'## {key}. {title}\n\n' + (f"Skipped: {result['skipped']}.\n" if 'skipped' in result
                                       else result['markdown'])
  record_files.save(os.path.join(out_dir, f'part_{key}'),
                    {'part': key, 'title': title,
                     **{k: v for k, v in result.items() if k != 'markdown'}}, text)
  print(text, flush=True)
  return text


def run_parts(out_dir: str, budget_s: float, smoke: bool, precision: str,
              data_npz: Optional[str] = None) -> list[str]:
  """Runs parts a to f in order while the budget lasts; returns their markdown."""
  deadline = time.monotonic() + budget_s
  left = lambda: deadline - time.monotonic()
  parts: list[tuple[str, str, Callable[[], dict]]] = [
      (p.key, p.title, lambda p=p: run_timing_part(p, smoke, precision)) for p in TIMING_PARTS]
  parts.append(('e', 'MNIST-100 time to accuracy (JAX, compile included)',
                # Part f gets the budget's last tenth.
                lambda: run_time_to_accuracy(out_dir, smoke, precision,
                                             max(1.0, left() - budget_s / 10), data_npz)))
  parts.append((RESNET.key, RESNET.title, lambda: run_timing_part(RESNET, smoke, precision)))
  texts = []
  for key, title, measure in parts:
    start = time.monotonic()
    result = ({'skipped': f'the budget (--budget_s={budget_s:g}) was spent'} if left() <= 0
              else measure())
    result['wall_s'] = round(time.monotonic() - start, 1)
    texts.append(write_part(out_dir, key, title, result))
  return texts


def main():
  if _BUDGET_S.value <= 0:
    raise config_lib.ConfigError('budget_s', f'{_BUDGET_S.value:g}', 'must be > 0')
  if _SMOKE.value:
    jax.config.update('jax_platforms', 'cpu')
  out_dir = common_flags.out_dir('device_run')
  os.makedirs(out_dir, exist_ok=True)
  texts = run_parts(out_dir, _BUDGET_S.value, _SMOKE.value, _PRECISION.value,
                    common_flags.DATA_NPZ.value)
  with open(os.path.join(out_dir, 'device_run.md'), 'w') as f:
    f.write('\n'.join(texts))


if __name__ == '__main__':
  common_flags.run(main)
