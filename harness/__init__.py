"""A distributed-first image-classification training harness built on Hugging Face Accelerate."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``harness.load_run``, imported when first used: ``import harness`` stays light."""
    if name == "load_run":
        from harness.inference.trained import load_run

        return load_run
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
