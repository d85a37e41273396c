"""morphobench: Cell Painting screens from raw images to reproducible benchmark tables."""

__version__ = "0.1.0"
