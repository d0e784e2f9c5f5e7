"""This app keeps no tables yet."""
