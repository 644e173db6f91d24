"""freqlens: Fourier analysis of backdoor learning dynamics."""

__version__ = "0.1.0"
