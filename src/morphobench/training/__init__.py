"""morphobench.training."""
