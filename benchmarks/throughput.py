"""Train-step throughput on the local devices: compile time, steps/s, FLOP/s, fraction of peak.

Synthetic uint8 batches of each model family's shapes go through the trainer's own host
pipeline (batch indices, gather, prefetch) and its DataParallelTrainer; neither TensorFlow
nor TFDS is needed. For every model, global batch, device count and --variant it compiles
the step, warms up, then times --repeats runs of --steps steps (block_until_ready at the end
of each), the variants (and with --torch the PyTorch reference) interleaved within each
repeat, and reports the median. FLOPs and
bytes per step come from XLA's cost analysis of the compiled single step. Output: JSON lines
and markdown tables (printed and written under --out_dir).

  python -m benchmarks.throughput --models=mlp,conv_small --batch_sizes=100 \
      --variant= --variant=compute_dtype=bfloat16 --torch
"""
import collections
import datetime
import glob
import gzip
import importlib.metadata
import json
import os
import platform
import re
import statistics
import sys
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common_flags, peaks
from benchmarks.run_environment import cpu_description
from ssgan_jax.data import input_pipeline
from ssgan_jax.training import parallel, train
from ssgan_jax import main as ssgan_main
from ssgan_jax import config as config_lib
from ssgan_jax.config import Config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Each family with the flagfile of its reference protocol, its images and its class count.
MODELS = {'mlp': ('mnist.flags', (28, 28, 1), 10), 'conv_small': ('svhn.flags', (32, 32, 3), 10),
          'conv_large': ('cifar10.flags', (32, 32, 3), 10),
          'resnet18': ('cats_vs_dogs.flags', (224, 224, 3), 2)}
# Synthetic train set: this many global batches of distinct unlabeled images.
_UNLABELED_BATCHES = 4

_MODELS = flags.DEFINE_list('models', list(MODELS), f'Model families: {", ".join(MODELS)}.')
_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['100', '1024'], 'Global batch sizes (per stream).')
_DEVICE_COUNTS = flags.DEFINE_list(
    'device_counts', [], 'Device counts to run on (scaling); those above the local count are '
    'skipped. Default: all local devices.')
_VARIANTS = flags.DEFINE_multi_string(
    'variant', [''], 'Config overrides of one variant, e.g. "compute_dtype=bfloat16,'
    'steps_per_dispatch=10"; repeat the flag to compare variants in the same run ("" = defaults).')
_STEPS = flags.DEFINE_integer('steps', 20, 'Steps per timed repeat (rounded up to whole calls).')
_WARMUP = flags.DEFINE_integer('warmup', 5, 'Untimed steps after compiling.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed repeats; the median is reported.')
_TORCH = flags.DEFINE_boolean('torch', False, 'Also time the PyTorch reference on the same '
                              'device, in the same round-robin as the JAX step, and report '
                              'JAX/torch ratios.')
_TORCH_MODES = flags.DEFINE_list('torch_modes', ['eager', 'compile'],
                                 'With --torch, how the reference runs: eager and/or compile '
                                 '(torch.compile, where it works).')
_PROFILE = flags.DEFINE_integer(
    'profile_top', 0, 'After timing, trace --steps more steps of each case with jax.profiler '
    '(a Perfetto trace under --out_dir) and report its N slowest XLA ops; 0: no profile.')
_MATMUL_SIZE = flags.DEFINE_integer('matmul_size', 0, 'Side of the bf16 and f32 matmuls that '
                                    "measure the device's peak (0: 8192, or 1024 on CPU).")
_NAME = flags.DEFINE_string('name', 'throughput', 'Base name of the output files.')


def parse_variant(text: str) -> dict:
  """'a=1,b=x' -> {'a': '1', 'b': 'x'} as flag strings."""
  items = [item for item in text.split(',') if item]
  if not all('=' in item for item in items):
    raise config_lib.ConfigError('variant', text, 'must be comma-separated name=value items')
  return dict(item.split('=', 1) for item in items)


def _positive_ints(name: str, values: list) -> list:
  if not all(v.isdigit() and int(v) > 0 for v in values):
    raise config_lib.ConfigError(name, ','.join(values), 'must be positive integers')
  return [int(v) for v in values]


def check_flags() -> None:
  """Raises ConfigError for the first bad flag, before anything is compiled."""
  unknown = [m for m in _MODELS.value if m not in MODELS]
  if unknown or not _MODELS.value:
    raise config_lib.ConfigError('models', ','.join(_MODELS.value), f'allowed: {", ".join(MODELS)}')
  batch_sizes = _positive_ints('batch_sizes', _BATCH_SIZES.value)
  _positive_ints('device_counts', _DEVICE_COUNTS.value)
  for name, flag, least in (('steps', _STEPS, 1), ('repeats', _REPEATS, 1), ('warmup', _WARMUP, 0)):
    if flag.value < least:
      raise config_lib.ConfigError(name, flag.value, f'must be >= {least}')
  if not set(_TORCH_MODES.value) <= {'eager', 'compile'} or not _TORCH_MODES.value:
    raise config_lib.ConfigError('torch_modes', ','.join(_TORCH_MODES.value),
                                 'allowed: eager, compile')
  for text in _VARIANTS.value:
    variant = parse_variant(text)
    for model in _MODELS.value:
      try:
        config_lib.validate(model_config(model, batch_sizes[0], variant))
      except (flags.Error, config_lib.ConfigError) as e:
        raise config_lib.ConfigError('variant', text, str(e).splitlines()[0]) from None


def model_config(model: str, batch_size: int, variant: dict) -> Config:
  """The model's reference config at `batch_size` with the variant's overrides, no periodic work."""
  flagfile, _, _ = MODELS[model]
  args = [f'--flagfile={os.path.join(REPO, "experiments", flagfile)}',
          f'--batch_size={batch_size}', '--num_steps=1000000000', '--log_every=1000000000',
          '--eval_every=1000000000', '--checkpoint_every=1000000000']
  config, _ = ssgan_main.parse_config(args + [f'--{k}={v}' for k, v in variant.items()])
  return config


# The step as XLA's own algorithms run it, one step a call: the program whose FLOPs are counted.
PLAIN_STEP = dict(steps_per_dispatch=1, data_on_device=False, conv_transpose='dilated',
                  conv_input_gradient='dilated', conv_kernel_gradient='xla')


def data_shape(model: str, config: Config) -> tuple[tuple, int]:
  """The image shape (the flagfile's, or the variant's --image_size) and the class count."""
  _, image_shape, num_classes = MODELS[model]
  if config.image_size:
    image_shape = (config.image_size, config.image_size, image_shape[-1])
  return image_shape, num_classes


def synthetic_data(batch_size: int, image_shape: tuple, num_classes: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  images = lambda n: rng.integers(0, 256, (n, *image_shape), dtype=np.uint8)
  empty = np.zeros(0, np.int32)
  return input_pipeline.SemiSupervisedData(
      labeled_images=images(batch_size), labeled_labels=np.arange(batch_size, dtype=np.int32)
      % num_classes, unlabeled_images=images(_UNLABELED_BATCHES * batch_size),
      validation_images=images(0), validation_labels=empty, test_images=images(0),
      test_labels=empty)


def cost_per_step(compiled) -> dict:
  """FLOPs and bytes accessed of one compiled call, per device, from XLA's cost analysis."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax: one dict per program
    analysis = analysis[0]
  analysis = analysis or {}
  return {'flops': analysis.get('flops'), 'bytes': analysis.get('bytes accessed')}


class Case:
  """One model, batch, device count and variant: its compiled step, state and input stream."""

  def __init__(self, model: str, batch_size: int, devices: list, variant_text: str):
    self.model, self.batch_size, self.devices = model, batch_size, devices
    self.variant = variant_text
    self.config = model_config(model, batch_size, parse_variant(variant_text))
    self.image_shape, self.num_classes = data_shape(model, self.config)
    info = input_pipeline.DatasetInfo(self.num_classes, self.image_shape, None)
    self.setup = train.Setup.create(self.config, info)
    self.data = synthetic_data(batch_size, self.image_shape, self.num_classes)
    step_fn = lambda state, batch: train.train_step(self.setup, state, batch)
    self.trainer = parallel.DataParallelTrainer(step_fn, self.config, self.data, train.AXIS,
                                                devices)
    init_images = self.data.unlabeled_images[:train.INIT_BATCH_SIZE]
    self.chunks = self.trainer.chunks(0)
    self.steps_per_call = self.trainer.steps_in_call(0)
    # Traced and compiled at the run's precision; the compiled calls keep it.
    with jax.default_matmul_precision(self.config.matmul_precision):
      self.state = self.trainer.replicate(train.create_train_state(self.setup, init_images))
      start = time.perf_counter()
      self.compiled = self.trainer.fn.lower(
          *self.trainer.arguments(self.state, next(self.chunks))).compile()
      self.compile_s = time.perf_counter() - start
      plain = self.config.replace(**PLAIN_STEP)
      self.cost = cost_per_step(self.compiled if plain == self.config
                                else self._plain_step_compiled(plain, info))
    self.timings = []

  def _plain_step_compiled(self, config: Config, info):
    """The one-step program of the same arithmetic with XLA's own convolution algorithms.

    XLA's cost analysis counts a loop's body once (scanned steps and kernel gradients by
    patches are loops), and the 'subpixel' algorithms multiply zero taps, while for XLA's
    own convolutions over zero-dilated inputs it counts the products of real pixels only:
    this program's count is the work of the step itself, whatever algorithm runs it."""
    setup = train.Setup.create(config, info)
    plain = parallel.DataParallelTrainer(
        lambda state, batch: train.train_step(setup, state, batch), config, self.data,
        train.AXIS, self.devices)
    return plain.fn.lower(self.state, next(plain.chunks(0))).compile()

  def run(self, num_steps: int) -> float:
    """Runs whole calls covering num_steps; returns the steps run."""
    calls = -(-num_steps // self.steps_per_call)
    for _ in range(calls):
      self.state, _ = self.compiled(*self.trainer.arguments(self.state, next(self.chunks)))
    jax.block_until_ready(self.state)
    return calls * self.steps_per_call

  def time(self, num_steps: int) -> None:
    start = time.perf_counter()
    steps = self.run(num_steps)
    self.timings.append(steps / (time.perf_counter() - start))

  def record(self) -> dict:
    kind = self.devices[0].device_kind
    steps_per_s = statistics.median(self.timings)
    num_devices = len(self.devices)
    flops = self.cost['flops'] and self.cost['flops'] * num_devices
    peak = peaks.peak_for(kind)
    peak_rate, peak_flops = (peak.rate(self.config.compute_dtype, self.config.matmul_precision)
                             if peak else (None, None))
    achieved = flops and flops * steps_per_s
    return {
        'kind': 'jax', 'model': self.model, 'global_batch': self.batch_size,
        'num_devices': num_devices, 'per_device_batch': self.batch_size // num_devices,
        'variant': self.variant, 'parallel': self.config.parallel,
        'compute_dtype': self.config.compute_dtype,
        'matmul_precision': self.config.matmul_precision,
        'steps_per_dispatch': self.config.steps_per_dispatch,
        'data_on_device': self.trainer.on_device, 'donate_state': self.config.donate_state,
        'compile_s': round(self.compile_s, 3), 'steps_per_s': steps_per_s,
        'images_per_s': steps_per_s * self.batch_size,
        'steps_per_s_repeats': self.timings,
        'flops_per_step': flops, 'bytes_per_step': self.cost['bytes'] and
        self.cost['bytes'] * num_devices, 'achieved_flops_per_s': achieved,
        'peak_device': peak.name if peak else None, 'peak_rate': peak_rate,
        'peak_flops_per_s': peak_flops,
        'fraction_of_peak': (achieved / (peak_flops * num_devices)
                             if achieved and peak_flops else None),
        'peak_note': None if peak else f'unknown device {kind!r}: no published peak',
    }


# An instruction of XLA's optimised HLO text: its name, result shape, opcode and source op.
_HLO_INSTRUCTION = re.compile(
    r'^\s*(?:ROOT )?%?([\w.-]+) = (\S+?\[[^\]]*\])\S* ([\w-]+)\((.*)$', re.MULTILINE)
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def profile(case: Case, trace_root: str, top: int) -> dict:
  """The `top` XLA ops of the case's compiled step by traced time per step.

  Trace events are matched to the instructions of the compiled program's HLO by name (on CPU
  the thunks, on GPU the ops of XLA's op track); each op comes with its result shape and the
  JAX operation it came from, where XLA kept that. XLA:CPU's thunks also have an 'end: <op>'
  event, when the executor marks the op done, and its Eigen convolutions run asynchronously:
  their own event marks only the launch. So an op counts from its launch to its end event,
  which can include time the executor was busy with other ops; ops that run at the same time
  each count in full.
  """
  variant = re.sub(r'\W+', '_', case.variant) or 'default'
  trace_dir = os.path.join(trace_root,
                           f'{case.model}_{case.batch_size}_{len(case.devices)}_{variant}')
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    steps = case.run(_STEPS.value)
  [path] = glob.glob(os.path.join(trace_dir, '**', '*perfetto_trace.json.gz'), recursive=True)
  with gzip.open(path) as f:
    events = json.load(f)['traceEvents']
  hlo = {m[1]: (m[2], m[3], _OP_NAME.search(m[4])) for m in
         _HLO_INSTRUCTION.finditer(case.compiled.as_text())}
  launches, finishes = collections.defaultdict(list), collections.defaultdict(list)
  for event in (e for e in events if e.get('ph') == 'X'):
    name = event.get('name', '')
    if name in hlo:
      launches[name].append(event)
    elif name.startswith('end: ') and name[len('end: '):] in hlo:
      finishes[name[len('end: '):]].append(event)
  by_time = lambda found: sorted(found, key=lambda e: e['ts'])
  micros = collections.Counter({
      name: sum(end['ts'] + end.get('dur', 0) - start['ts'] for start, end in
                zip(by_time(started), by_time(finishes.get(name, started))))
      for name, started in launches.items()})
  traced = sum(micros.values())
  return {'kind': 'profile', 'model': case.model, 'global_batch': case.batch_size,
          'num_devices': len(case.devices), 'variant': case.variant, 'steps': steps,
          'trace_dir': trace_dir, 'traced_ms_per_step': traced / 1e3 / steps,
          'top_ops': [{'name': name, 'ms_per_step': us / 1e3 / steps, 'share': us / traced,
                       'opcode': hlo[name][1], 'shape': hlo[name][0],
                       'op_name': hlo[name][2] and hlo[name][2][1]}
                      for name, us in micros.most_common(top)]}


def interleaved(cases: list, warmup: int, repeats: int, steps: int) -> None:
  """Warms every case up, then times the repeats round-robin so load drifts hit all alike."""
  for case in cases:
    case.run(warmup)
  for _ in range(repeats):
    for case in cases:
      case.time(steps)


def matmul_peak(dtype, n: int = 0, precision: str = 'default') -> dict:
  """Measured FLOP/s of a square n x n matmul (0: 8192, or 1024 on CPU) at JAX's matmul
  `precision` on the first device (median of 10 after warm-up)."""
  n = n or (1024 if jax.devices()[0].platform == 'cpu' else 8192)
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  matmul = jax.jit(jnp.matmul)
  with jax.default_matmul_precision(precision):
    jax.block_until_ready(matmul(a, b))
    times = []
    for _ in range(10):
      start = time.perf_counter()
      jax.block_until_ready(matmul(a, b))
      times.append(time.perf_counter() - start)
  return {'kind': 'matmul_peak', 'dtype': jnp.dtype(dtype).name, 'matmul_precision': precision,
          'n': n, 'flops_per_s': 2 * n**3 / statistics.median(times)}


def matmul_peaks(records: list, n: int = 0) -> list:
  """`matmul_peak` of bfloat16, and of float32 at every precision the records ran at."""
  precisions = sorted({r['matmul_precision'] for r in records if r['kind'] == 'jax'}
                      or {'default'})
  return ([matmul_peak(jnp.bfloat16, n)]
          + [matmul_peak(jnp.float32, n, precision) for precision in precisions])


def _describe(error: Exception) -> str:
  return f'{type(error).__name__}: {str(error).strip()[:300]}'


def torch_unsupported(config: Config) -> list[str]:
  """The settings of `config` the PyTorch reference does not implement."""
  from benchmarks.torch_reference.train import unsupported_settings  # pylint: disable=g-import-not-at-top
  return unsupported_settings(config)


class TorchCase:
  """The PyTorch reference of a JAX case on the same device and batches, eager or compiled,
  timed in the same round-robin (`interleaved`) as the JAX step.

  torch.compile fails on some platforms: the error is kept for the record, and the case stops.
  """

  def __init__(self, case: Case, mode: str):
    import torch  # pylint: disable=g-import-not-at-top
    from benchmarks.torch_reference.train import TorchTrainer  # pylint: disable=g-import-not-at-top
    self.case, self.mode, self.torch_version = case, mode, torch.__version__
    self.device = 'cuda' if case.devices[0].platform == 'gpu' else 'cpu'
    from benchmarks.torch_reference.train import match_jax_precision  # pylint: disable=g-import-not-at-top
    self.precision = match_jax_precision(case.config.matmul_precision, self.device)
    self.sync = torch.cuda.synchronize if self.device == 'cuda' else (lambda: None)
    arrays = input_pipeline.train_arrays(case.data)
    self.batches = [input_pipeline.gather_batch(arrays, indices) for _, indices in zip(
        range(_UNLABELED_BATCHES), input_pipeline.train_indices(case.data, case.config, 0))]
    self.timings, self.error, self.steps_run = [], None, 0
    try:
      self.trainer = TorchTrainer(case.config, case.num_classes, case.image_shape,
                                  case.data.unlabeled_images[:train.INIT_BATCH_SIZE],
                                  device=self.device, compile=mode == 'compile')
    except Exception as e:  # pylint: disable=broad-except
      self.error = _describe(e)

  def run(self, num_steps: int) -> bool:
    """Runs num_steps steps and waits for them; False once the reference has failed."""
    if self.error:
      return False
    try:
      for _ in range(num_steps):
        self.trainer.train_step(self.batches[self.steps_run % len(self.batches)])
        self.steps_run += 1
      self.sync()
    except Exception as e:  # pylint: disable=broad-except
      self.error = _describe(e)
    return self.error is None

  def time(self, num_steps: int) -> None:
    start = time.perf_counter()
    if self.run(num_steps):
      self.timings.append(num_steps / (time.perf_counter() - start))

  def record(self, jax_record: dict) -> dict:
    """Its steps/s and JAX/torch ratio; achieved FLOP/s by XLA's count of the JAX step (the
    same arithmetic)."""
    record = {'kind': 'torch', 'model': self.case.model, 'global_batch': self.case.batch_size,
              'mode': self.mode, 'device': self.device, 'torch': self.torch_version,
              'matmul_precision': self.case.config.matmul_precision, **self.precision}
    if self.error:
      return {**record, 'error': self.error}
    steps_per_s = statistics.median(self.timings)
    return {**record, 'steps_per_s': steps_per_s, 'steps_per_s_repeats': self.timings,
            'jax_over_torch': jax_record['steps_per_s'] / steps_per_s,
            'achieved_flops_per_s': (jax_record['flops_per_step'] and
                                     jax_record['flops_per_step'] * steps_per_s)}


def roofline(record: dict) -> list:
  """Projected steps/s of the measured step on each device of the peak table (one chip)."""
  if not record.get('flops_per_step') or not record.get('bytes_per_step'):
    return []
  flops = record['flops_per_step'] / record['num_devices']
  bytes_ = record['bytes_per_step'] / record['num_devices']
  rows = []
  for peak in peaks.PEAKS:
    peak_rate, peak_flops = peak.rate(record['compute_dtype'], record['matmul_precision'])
    compute_s, memory_s = flops / peak_flops, bytes_ / peak.memory_bytes_per_s
    rows.append({'kind': 'roofline_projection', 'model': record['model'],
                 'per_device_batch': record['per_device_batch'],
                 'compute_dtype': record['compute_dtype'], 'device': peak.name,
                 'peak_rate': peak_rate,
                 'steps_per_s': 1 / max(compute_s, memory_s),
                 'bound': 'compute' if compute_s >= memory_s else 'memory'})
  return rows


def _fmt(value, spec: str = '.3g', missing: str = 'n/a') -> str:
  return missing if value is None else format(value, spec)


def markdown(header: dict, records: list) -> str:
  jax_rows = [r for r in records if r['kind'] == 'jax']
  out = [f"Device: {header['num_local_devices']} x {header['device_kind']} "
         f"({header['platform']}), "
         + (f"host CPU {header['cpu']}, " if 'cpu' in header else '')
         + f"jax {header['jax']}, jaxlib {header['jaxlib']}, "
         f"{header['date']}, XLA_FLAGS `{header.get('xla_flags') or ''}`. "
         f"Command: `{header['command']}`", '',
         '| model | batch | devices | variant | compile s | steps/s | images/s | GFLOP/step '
         '| MB/step | achieved TFLOP/s | fraction of peak |',
         '|---|---|---|---|---|---|---|---|---|---|---|']
  for r in jax_rows:
    fraction = (f"{100 * r['fraction_of_peak']:.1f} % of {r['peak_device']} {r['peak_rate']}"
                if r['fraction_of_peak'] is not None else r['peak_note'] or 'n/a')
    out.append(
        f"| {r['model']} | {r['global_batch']} | {r['num_devices']} | {r['variant'] or 'default'} "
        f"| {r['compile_s']:.1f} | {r['steps_per_s']:.2f} | {r['images_per_s']:.0f} "
        f"| {_fmt(r['flops_per_step'] and r['flops_per_step'] / 1e9)} "
        f"| {_fmt(r['bytes_per_step'] and r['bytes_per_step'] / 1e6)} "
        f"| {_fmt(r['achieved_flops_per_s'] and r['achieved_flops_per_s'] / 1e12)} | {fraction} |")
  # bfloat16 matmuls run at one rate whatever the precision; float32 at the run's.
  rate_key = lambda dtype, precision: (dtype, 'default' if dtype == 'bfloat16' else precision)
  matmuls = {rate_key(r['dtype'], r.get('matmul_precision', 'default')): r
             for r in records if r['kind'] == 'matmul_peak'}

  def of_matmul(flops_per_s, dtype: str, precision: str, num_devices: int = 1) -> str:
    matmul = matmuls.get(rate_key(dtype, precision))
    if not flops_per_s or not matmul:
      return 'n/a'
    return f"{100 * flops_per_s / (matmul['flops_per_s'] * num_devices):.1f} %"

  rate_name = lambda dtype, precision: (
      dtype if rate_key(dtype, precision)[1] == 'default' else f'{dtype} ({precision})')
  for matmul in matmuls.values():
    out += ['', f"Measured {rate_name(matmul['dtype'], matmul.get('matmul_precision'))} matmul "
            f"({matmul['n']}^3): {matmul['flops_per_s'] / 1e12:.3g} TFLOP/s."]
  big = [r for r in jax_rows if r['model'] != 'mlp' and r['achieved_flops_per_s']]
  for r in big:
    precision = r.get('matmul_precision', 'default')
    out.append(f"- {r['model']} batch {r['global_batch']} ({r['variant'] or 'default'}): "
               f"{of_matmul(r['achieved_flops_per_s'], r['compute_dtype'], precision, r['num_devices'])}"
               f" of the measured {rate_name(r['compute_dtype'], precision)} matmul rate")
  torch_rows = [r for r in records if r['kind'] == 'torch']
  if torch_rows:
    out += ['', '| model | batch | torch mode | torch steps/s | JAX/torch | torch TFLOP/s '
            '(XLA count) | of the measured float32 matmul rate |', '|---|---|---|---|---|---|---|']
    for r in torch_rows:
      result = (f"{r['steps_per_s']:.2f} | {r['jax_over_torch']:.2f}x | "
                f"{_fmt(r['achieved_flops_per_s'] and r['achieved_flops_per_s'] / 1e12)} | "
                f"{of_matmul(r['achieved_flops_per_s'], 'float32', r.get('matmul_precision', 'default'))}"
                if 'steps_per_s' in r
                else f"{r.get('error') or r.get('note')} | n/a | n/a | n/a")
      out.append(f"| {r['model']} | {r['global_batch']} | {r.get('mode', 'n/a')} | {result} |")
  scaling = scaling_rows(jax_rows)
  if scaling:
    out += ['', '| model | batch | variant | devices | steps/s | speed-up | efficiency |',
            '|---|---|---|---|---|---|---|']
    out += [f"| {s['model']} | {s['global_batch']} | {s['variant'] or 'default'} | "
            f"{s['num_devices']} | {s['steps_per_s']:.2f} | {s['speedup']:.2f} | "
            f"{100 * s['efficiency']:.0f} % |" for s in scaling]
  projection = [r for r in records if r['kind'] == 'roofline_projection']
  if projection:
    out += ['', 'PROJECTION, not a measurement: roofline steps/s of the step measured above '
            '(its XLA FLOP and byte counts on this backend, per device) at the published peaks '
            'of one chip; real steps reach a fraction of this.', '',
            '| model | batch per device | dtype | device | projected steps/s | bound |',
            '|---|---|---|---|---|---|']
    out += [f"| {r['model']} | {r['per_device_batch']} | {r['compute_dtype']} | {r['device']}"
            f" ({r['peak_rate']} peak) | "
            f"{r['steps_per_s']:.0f} | {r['bound']} |" for r in projection]
  for r in (r for r in records if r['kind'] == 'profile'):
    out += ['', f"Slowest XLA ops of {r['model']}, batch {r['global_batch']}, "
            f"{r['num_devices']} device(s), {r['variant'] or 'default'}: traced over "
            f"{r['steps']} steps, {r['traced_ms_per_step']:.1f} ms of ops a step (each op from "
            f"its launch to its end; ops that overlap each count in full). Trace: "
            f"`{r['trace_dir']}`", '',
            '| op | opcode | result shape | ms/step | share | from |', '|---|---|---|---|---|---|']
    out += [f"| {o['name']} | {o['opcode']} | {o['shape']} | {o['ms_per_step']:.2f} | "
            f"{100 * o['share']:.1f} % | {o['op_name'] or ''} |" for o in r['top_ops']]
  return '\n'.join(out) + '\n'


def scaling_rows(jax_rows: list) -> list:
  """Speed-up and efficiency at a fixed global batch against the run on one device."""
  rows = []
  for r in jax_rows:
    base = next((b for b in jax_rows if b['num_devices'] == 1 and
                 (b['model'], b['global_batch'], b['variant']) ==
                 (r['model'], r['global_batch'], r['variant'])), None)
    if base and any(o['num_devices'] > 1 for o in jax_rows
                    if (o['model'], o['global_batch']) == (r['model'], r['global_batch'])):
      speedup = r['steps_per_s'] / base['steps_per_s']
      rows.append({**{k: r[k] for k in ('model', 'global_batch', 'variant', 'num_devices',
                                         'steps_per_s')},
                   'speedup': speedup, 'efficiency': speedup / r['num_devices']})
  return rows


def run_header(benchmark: str, steps: int, warmup: int, repeats: int) -> dict:
  """The header record of a timing run: its command, date, device, versions and flags."""
  devices = jax.local_devices()
  return {
      'kind': 'header', 'benchmark': benchmark,
      'command': ' '.join([f'python -m benchmarks.{benchmark}'] + sys.argv[1:]),
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'device_kind': devices[0].device_kind, 'platform': devices[0].platform,
      'num_local_devices': len(devices), 'jax': jax.__version__,
      'jaxlib': importlib.metadata.version('jaxlib'),
      'host': platform.machine(), 'cpu': cpu_description(), 'cpu_count': os.cpu_count(),
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'steps': steps, 'warmup': warmup, 'repeats': repeats}


def main():
  check_flags()
  devices = jax.local_devices()
  counts = [int(c) for c in _DEVICE_COUNTS.value] or [len(devices)]
  header = {**run_header('throughput', _STEPS.value, _WARMUP.value, _REPEATS.value),
            'skipped_device_counts': [c for c in counts if c > len(devices)]}
  out_dir = common_flags.out_dir('throughput')
  os.makedirs(out_dir, exist_ok=True)
  jsonl_path = os.path.join(out_dir, f'{_NAME.value}.jsonl')
  open(jsonl_path, 'w').close()

  def emit(new_records: list) -> None:
    """Prints and saves records as they come, so a long run leaves what it measured."""
    with open(jsonl_path, 'a') as f:
      for record in new_records:
        print(json.dumps(record), flush=True)
        f.write(json.dumps(record) + '\n')

  emit([header])
  records = []
  for model in _MODELS.value:
    for batch_size in map(int, _BATCH_SIZES.value):
      cases = [Case(model, batch_size, devices[:count], variant)
               for count in counts if count <= len(devices) and batch_size % count == 0
               for variant in _VARIANTS.value]
      # The reference runs beside the first one-device variant it implements (not, e.g., one
      # with bfloat16 compute, which would time another model).
      paired = next((c for c in cases if _TORCH.value and len(c.devices) == 1
                     and not torch_unsupported(c.config)), None)
      if _TORCH.value and paired is None:
        emit([{'kind': 'torch', 'model': model, 'global_batch': batch_size,
               'note': 'no one-device variant the PyTorch reference implements: '
               + '; '.join(' '.join(torch_unsupported(c.config)) for c in cases)}])
      torch_cases = ([TorchCase(paired, mode) for mode in _TORCH_MODES.value]
                     if _TORCH.value and paired and devices[0].platform in ('cpu', 'gpu')
                     else [])
      interleaved(cases + torch_cases, _WARMUP.value, _REPEATS.value, _STEPS.value)
      for case in cases:
        new = [case.record()]
        if _TORCH.value and case is paired:
          new += ([t.record(new[0]) for t in torch_cases] or [
              {'kind': 'torch', 'model': model, 'global_batch': batch_size,
               'note': f'no PyTorch reference on {devices[0].platform}'}])
        if _PROFILE.value:
          new.append(profile(case, os.path.join(out_dir, f'{_NAME.value}_traces'), _PROFILE.value))
        emit(new)
        records += new
      del cases, torch_cases
  new = matmul_peaks(records, _MATMUL_SIZE.value)
  projected = {(r['model'], r['global_batch'], r['compute_dtype'], r['matmul_precision']): r
               for r in records
               if r['kind'] == 'jax' and r['num_devices'] == 1}
  new += [p for r in projected.values() for p in roofline(r)]
  emit(new)
  records += new
  table = markdown(header, records)
  with open(os.path.join(out_dir, f'{_NAME.value}.md'), 'w') as f:
    f.write(table)
  print(table)


if __name__ == '__main__':
  common_flags.run(main)
