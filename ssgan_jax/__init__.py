"""Semi-supervised GANs for image classification in JAX/Flax."""
from ssgan_jax import xla_cpu

xla_cpu.request_eigen_kernels()
