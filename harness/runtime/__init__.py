"""What every process runs with: the Accelerator, its threads and DeepSpeed settings, decisions made together,
stop signals, logging."""
