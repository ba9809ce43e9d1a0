"""The HTTP plumbing every feature uses: errors as answers, the guard and its headers, body limits, multipart forms, the
OpenAPI document, shared dependencies and answers, routes answered below FastAPI's routing."""
