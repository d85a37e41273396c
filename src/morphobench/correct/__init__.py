"""morphobench.correct."""
