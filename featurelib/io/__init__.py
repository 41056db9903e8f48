"""Writers and readers of the output layout (CONTRACT.md, "Output")."""
