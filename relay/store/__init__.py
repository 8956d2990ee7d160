"""The relay's stores."""
