"""Test doubles shared by the test suites (never imported by the legato package)."""
