"""morphobench.evaluate."""
