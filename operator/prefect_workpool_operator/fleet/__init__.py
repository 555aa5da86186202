"""Many policies at once: the turns that keep cycles on their interval and each Prefect server within its budget."""
