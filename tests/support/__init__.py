"""Helpers that start real servers and drive logins for the test suite."""
