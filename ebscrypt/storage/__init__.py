"""Persistence: metadata (SQLAlchemy Core) and block objects (directory or object store)."""
