"""Raw files or the hub -> tokenized datasets. One loader serves both, so preprocessing is the same either way."""
