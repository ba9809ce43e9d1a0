"""Watching the service live: a job's Server-Sent Events, Prometheus metrics, health."""
