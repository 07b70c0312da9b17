"""One client per platform, each on requests with the platform's real endpoints and auth."""
