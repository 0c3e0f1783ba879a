"""Figures over results rows: absolute agreement, pairwise accuracy and consistency, their Rich views,
and the heatmap plot. Reads rows only; never runs a model."""
