"""Writers and readers of the output layout (docs/CONTRACT.md, "Output layout")."""
