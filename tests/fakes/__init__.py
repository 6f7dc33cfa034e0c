"""Fakes of the far end: a scripted provider and loopback upstream servers."""
