"""Semi-supervised GANs for image classification in JAX/Flax."""
