"""What a run tells people: its summary, its history and TensorBoard events, the outputs of each split, figures,
and several runs compared."""
