"""kopf's glue: the policy handlers, start-up (login, Lease, probes) and the probe server."""
