"""The browser admin console (templates live in frontend/)."""
