"""Table declarations, one module per area, all on ``ebscrypt.storage.schema.metadata``."""
