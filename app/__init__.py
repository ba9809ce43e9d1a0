"""The API service: feature packages (jobs, datasets, serving, accounts, live, catalog, dashboard) over the web
plumbing (app.web) over the core the workers share (app.core); the entry points beside them (main, server, client,
cli, local)."""
