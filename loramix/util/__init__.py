"""Small utilities every layer may use: atomic writes, file hashes, image files, memory figures, progress."""
