"""Training side: the engine (a plain library) and the Celery tasks that wrap it."""
