"""fret-distill pipeline stages: pure Python, no Apache Beam imports."""
