"""morphobench.embed."""
