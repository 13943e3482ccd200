"""What every process runs with: the Accelerator, its threads, DeepSpeed and FSDP settings, decisions made together,
stop signals, logging."""
