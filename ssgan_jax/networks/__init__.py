"""The Flax discriminators and generators, and the convolution algorithms they run with."""
