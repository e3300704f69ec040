"""ebscrypt: a self-hostable, AWS-compatible service for encrypted images and block storage."""

__version__ = "0.1.0"
