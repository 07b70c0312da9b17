"""Newsroom Digest: newsletter and social sharing automation for news sites."""
