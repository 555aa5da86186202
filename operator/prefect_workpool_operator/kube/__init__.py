"""Kubernetes: login, the Secret cache, the Lease elector."""
