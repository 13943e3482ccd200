"""A distributed-first image-classification training harness built on Hugging Face Accelerate."""

__version__ = "0.1.0"
