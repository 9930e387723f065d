"""Command-line plumbing the commands share: flags, their checks, one-line errors, the flag reference."""
