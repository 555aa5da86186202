"""Prefect's REST API: pooled HTTP, the pool/worker/flow-run reads and guarded writes, the event stream, the backlog reads."""
