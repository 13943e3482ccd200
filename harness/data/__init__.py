"""Images from files to batches: finding and checking them, the splits, built-in data, caches, transforms and
loaders with their workers."""
