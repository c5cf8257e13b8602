"""Through-focus microscopy."""
