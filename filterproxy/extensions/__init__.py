"""Built-in filters, one package per feature."""
