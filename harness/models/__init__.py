"""Models: built by name (torchvision, timm, custom), the input they take on the device, their buffers under
DeepSpeed and FSDP, their blocks."""

from harness.models import custom  # noqa: F401  (registers the custom models)
