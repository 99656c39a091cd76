"""The asset graph, by layer: lake → features → training → registry; features → online."""
