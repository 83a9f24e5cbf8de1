"""ubnas: hardware-aware differentiable neural architecture search for systolic arrays."""
__version__ = "0.1.0"


def build(spec_or_path):
    """Build the plain ``nn.Module`` of an architecture spec (an ArchSpec or a YAML path).

    Imports torch only when called, so ``import ubnas`` stays light.
    """
    from .build import build as _build
    return _build(spec_or_path)
