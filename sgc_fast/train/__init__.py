"""The training system: ``sgc-train`` (:func:`sgc_fast.train.cli.main`), its loop, models and checkpoints."""

from .checkpoint import load_checkpoint, save_checkpoint
from .models import build_model, cam_grads, export_state_dict, forward_feats, load_weights

__all__ = ["build_model", "cam_grads", "export_state_dict", "forward_feats", "load_checkpoint", "load_weights",
           "main", "save_checkpoint"]


def main(argv=None):
    """``sgc-train``: see :mod:`sgc_fast.train.cli`."""
    from .cli import main as _main

    return _main(argv)
