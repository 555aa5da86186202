"""Command-line entry points beside the operator: `why` (read-only) and `uninstall` (the chart's pre-delete hook)."""
