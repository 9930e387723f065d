import sys, time
sys.argv=['x','--models=conv_small','--batch_sizes=100']
from absl import flags
from benchmarks import throughput
flags.FLAGS(sys.argv)
import jax, datetime
for variant in sys.argv_variants if False else ['steps_per_dispatch=2', 'data_on_device=true']:
  t = time.perf_counter(); c = throughput.Case('conv_small', 100, jax.devices()[:1], variant)
  print(variant, 'built and compiled in %.1f s' % (time.perf_counter() - t), flush=True)
  t = time.perf_counter(); steps = c.run(2); dt = time.perf_counter() - t
  print(variant, datetime.datetime.utcnow().isoformat(), f'{steps} steps in {dt:.1f} s: {steps/dt:.4f} steps/s', flush=True)
