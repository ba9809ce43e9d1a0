"""The workers: the Celery app over two pipelines (training, ingest) over the one lease machinery they share
(leases)."""
