"""`taas up`: the whole service on one machine as child processes (Redis, the API, the workers), state in one folder."""
