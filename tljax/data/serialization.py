"""Byte-for-byte reproducible TFDS builds."""

from __future__ import annotations

import contextlib

from tensorflow_datasets.core import example_serializer


@contextlib.contextmanager
def deterministic_serialization():
  """Serialises examples with sorted feature-map keys while the block runs.

  A `tf.train.Example` keeps its features in a protobuf map, whose plain
  serialisation follows hash-table order; that order changes from one process
  to the next, so the same dataset would come out as different bytes in every
  build. TFDS has no option for `SerializeToString(deterministic=True)`, so its
  serializer is swapped for the length of a build and restored afterwards.
  """
  original = example_serializer.ExampleSerializer.serialize_example

  def serialize_example(self, example):
    return self.get_tf_example(example).SerializeToString(deterministic=True)

  example_serializer.ExampleSerializer.serialize_example = serialize_example
  try:
    yield
  finally:
    example_serializer.ExampleSerializer.serialize_example = original
