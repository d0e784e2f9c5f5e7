"""Admin registrations arrive with this app's models."""
