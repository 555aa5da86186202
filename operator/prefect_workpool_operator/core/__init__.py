"""Pure decision logic: plain data in, plain data out.

Nothing here may talk to Kubernetes, Prefect or AWS (an import-linter contract in
pyproject.toml enforces it), so every decision is testable without a server.
"""
