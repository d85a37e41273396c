"""morphobench.images."""
