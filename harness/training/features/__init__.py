"""Features around the training loop (the weight average, early stopping, mixup, ...): one module each, called
by the Trainer at named moments (base.py), listed in registry.py."""
