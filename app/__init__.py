"""taas HTTP service."""
