"""Experiments: ``python -m experiments.ablation`` (the ablation study, RESULTS.md) and the
PyTorch peer (``experiments.peers``)."""
