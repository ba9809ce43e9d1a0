"""The ingest pipeline: an uploaded archive read safely, its layout found, its images decoded once into a store."""
