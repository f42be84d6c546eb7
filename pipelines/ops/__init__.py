"""Operating the pipeline: provision, the dead-letter topic, status and ad-hoc queries."""
