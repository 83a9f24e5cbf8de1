"""ubnas: hardware-aware differentiable neural architecture search for systolic arrays."""
__version__ = "0.1.0"


def __getattr__(name):
    """``ubnas.build`` is the module ``ubnas.build``, imported on first use so that ``import ubnas``
    stays light (no torch).  The module is callable: ``ubnas.build(spec_or_path)`` builds the plain
    ``nn.Module`` of an architecture spec (an ArchSpec or a YAML path)."""
    if name == "build":
        import importlib
        return importlib.import_module(".build", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
