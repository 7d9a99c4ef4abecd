"""jobferry.services."""
