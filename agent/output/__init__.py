"""Raw trainer output as log lines: splitting, redraw folding, levels and kinds."""
