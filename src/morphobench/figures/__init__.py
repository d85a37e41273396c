"""morphobench.figures."""
