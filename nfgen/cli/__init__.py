"""The command line: the Typer app, one short function per verb, and what the verbs share."""
