"""Apache Beam wiring: PipelineOptions, composite PTransforms over pipeline/, job entry points."""
