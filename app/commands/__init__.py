"""The `taas` command's subcommands (app.cli assembles them), built on app.client."""
