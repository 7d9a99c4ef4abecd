"""jobferry.daemon."""
