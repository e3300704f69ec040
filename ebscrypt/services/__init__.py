"""One module (or package) per AWS service; handlers register by operation name.

Handlers are plain functions ``(ctx: RequestContext, params: dict) -> dict``: params are
the operation's input as the botocore model names them (plain Python values: str, int,
bool, datetime, bytes, list, dict) and the result is the operation's output likewise. They
hold no SQL, crypto or wire formats: they call the domain and the engines.
"""
