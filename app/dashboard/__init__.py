"""The dashboard (GET /) and the API docs (/docs), served from the package (static/)."""
