"""Uploaded datasets: the upload (streamed to disk), their rows, which jobs may use them; the ingest itself runs on a
worker (worker.ingest)."""
