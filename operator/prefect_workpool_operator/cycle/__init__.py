"""One policy's cycle: observe (reads) -> decide (core) -> act (writes) -> report; the release on deletion; the client wiring."""
