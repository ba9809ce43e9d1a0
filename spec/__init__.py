"""What the API and the workers must agree on, below both: the JobSpec, the parameter schemas of every
registry entry, and dataset metadata. No torch here: the builders live in models/ and worker/."""
