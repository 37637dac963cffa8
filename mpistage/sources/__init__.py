"""What the root reads: one file, a tree, a stream or a file list, as chunks for the engine."""
