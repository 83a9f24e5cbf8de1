"""ubnas: hardware-aware differentiable neural architecture search for systolic arrays."""
__version__ = "0.1.0"
