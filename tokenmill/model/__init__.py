"""Model side of tokenmill: tensors in, tensors out. Knows nothing about requests."""
