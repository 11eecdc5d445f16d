"""prismrec: graph-based multimodal recommendation, implemented faithfully and compared honestly."""

__version__ = "0.1.0"
