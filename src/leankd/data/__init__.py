"""Data sets read from a local data directory: CIFAR-10 arrays, GLUE TSVs, tokenised text, pure-function randomness."""
