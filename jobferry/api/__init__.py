"""The HTTP API: thin Tornado handlers over the service layer."""
