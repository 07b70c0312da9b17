"""Social sharing: platform clients, the platforms' text rules, and the posting queue."""
