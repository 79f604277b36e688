"""xdxd: crystal structure determination from low-resolution single-crystal X-ray data."""
__version__ = "0.1.0"
