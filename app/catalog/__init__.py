"""GET /catalog: everything a JobSpec can name, from the registries in spec/, and the owner's datasets."""
