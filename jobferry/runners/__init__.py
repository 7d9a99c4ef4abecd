"""jobferry.runners."""
