"""jobferry.staging."""
