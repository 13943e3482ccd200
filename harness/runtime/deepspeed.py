"""What the harness tells DeepSpeed: the run config's accumulation, clipping and batch size, and buffers sized
for the model."""

from __future__ import annotations

from accelerate import Accelerator

# DeepSpeed's own defaults for its communication buffers, in elements
DEEPSPEED_BUCKETS = {"reduce_bucket_size": 500_000_000, "allgather_bucket_size": 500_000_000,
                     "stage3_prefetch_bucket_size": 50_000_000}


def configure_deepspeed(accelerator: Accelerator, grad_accum_steps: int, clip_grad_norm: float | None,
                        batch_size: int | None) -> None:
    """The run config is the one source of truth for accumulation and clipping under DeepSpeed too (accelerate
    would otherwise fill in its own defaults, clipping at 1.0); 0 turns clipping off. Nothing without DeepSpeed."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return
    plugin.deepspeed_config["gradient_accumulation_steps"] = grad_accum_steps
    plugin.deepspeed_config["gradient_clipping"] = clip_grad_norm or 0.0
    if batch_size is not None:  # the model is prepared without its loader, which would tell DeepSpeed
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = batch_size
        plugin.deepspeed_config["train_batch_size"] = batch_size * grad_accum_steps * accelerator.num_processes
    # weights/*.safetensors are consolidated with accelerator.get_state_dict, which ZeRO-3 allows only so.
    plugin.deepspeed_config.setdefault("zero_optimization", {})["stage3_gather_16bit_weights_on_model_save"] = True


def zero_stage(accelerator: Accelerator) -> int | None:
    """DeepSpeed's ZeRO stage (0 to 3); None without DeepSpeed."""
    plugin = accelerator.state.deepspeed_plugin
    return None if plugin is None else int(plugin.zero_stage)


def size_deepspeed_buckets(accelerator: Accelerator, parameters: int) -> None:
    """Before the model (of ``parameters`` elements) is prepared: DeepSpeed allocates its buckets whole, whatever
    the model's size (5e8 elements, 2 GB in fp32, made ZeRO 1/2 on two CPU processes 18x slower for a small CNN),
    and accelerate can fill "auto" for them only for transformers models. So a bucket holds at most the whole
    model; a size the DeepSpeed config sets is kept."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return
    zero = plugin.deepspeed_config.setdefault("zero_optimization", {})
    for key, default in DEEPSPEED_BUCKETS.items():
        if zero.get(key, "auto") == "auto":
            zero[key] = min(default, parameters)
