"""The tests' own helpers: clients for kubectl and AWS, sandboxes, proxies, recovery helpers."""
