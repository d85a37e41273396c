"""morphobench.simulate."""
