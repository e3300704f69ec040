"""Engines: KMS (key store, envelope encryption, audit), blocks (encrypted store), jobs."""
