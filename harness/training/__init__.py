"""Training: what a train command decides, the parts of a run, the Trainer and its optimizer step, the features
around the loop, the final evaluation."""
