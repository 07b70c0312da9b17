"""Newsroom Digest: newsletter and social sharing automation for news sites."""

__version__ = "0.1.0"
