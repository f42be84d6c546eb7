"""nova's command line: thin Typer modules over `pipelines`."""
