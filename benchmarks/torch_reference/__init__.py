"""A plain, eager PyTorch reference of ssgan_jax: the same models, losses and train loop."""
