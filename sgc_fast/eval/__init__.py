"""``sgc-eval``: accuracy and explanation metrics (content heatmap, pointing games, insertion /
deletion AUC) of ``sgc-train`` checkpoints. See :mod:`sgc_fast.eval.cli`."""

from .cli import METRICS, build_parser, cams, main, run

__all__ = ["METRICS", "build_parser", "cams", "main", "run"]
