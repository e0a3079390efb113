"""The scheduler: binds each unscheduled pod to a node that fits it, best-scored first (DESIGN §5)."""
