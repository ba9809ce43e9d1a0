"""Training jobs: submit, list, read (GET /jobs/{id}'s batched read), follow (losses, metrics), cancel, delete, download
(weights, TensorBoard files)."""
