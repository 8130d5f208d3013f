"""Shared pytest configuration. Test doubles live under tests/, never in the package."""
