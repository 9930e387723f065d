"""Datasets as arrays: TFDS reading and splitting, the embedded toy sets, labeled-subset choice, batches."""
