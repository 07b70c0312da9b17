"""The ASGI web app: public tracking and subscription routes."""
