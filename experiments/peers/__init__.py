"""The DeepCTR-Torch DIN peer: ``export_samples`` (mcjax side) and the programs that run in
the peer venv (``python -m experiments.peers.din_bench``, ``...din_ablation``)."""
