"""The wire: HTTP requests to (operation, params) and results back, per AWS protocol."""
