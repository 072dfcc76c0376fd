"""Command-line entry points (``mindrlhf <command>``)."""
