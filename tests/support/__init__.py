"""Real services and clients the tests drive."""
