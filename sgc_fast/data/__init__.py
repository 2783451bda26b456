"""Data sets for training and evaluating consistent-explanation classifiers.

- :class:`SyntheticShapes`: procedurally drawn shapes on cluttered backgrounds with a tunable
  background-hue shortcut, object masks and boxes; the embedded default (no download).
"""

from .synthetic import SHAPES, SPLITS, SyntheticShapes, write_imagefolder

__all__ = ["SHAPES", "SPLITS", "SyntheticShapes", "write_imagefolder"]
