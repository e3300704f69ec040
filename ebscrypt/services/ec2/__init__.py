"""EC2 operations, one module per resource family."""
