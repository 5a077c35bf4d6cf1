"""What the routes call: commands and reads over the projection, no HTTP (no Litestar here)."""
