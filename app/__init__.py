"""micromoments: real-time micro-moment detection for retail event streams."""

__version__ = "0.1.0"
