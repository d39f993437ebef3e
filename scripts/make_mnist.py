"""`nfgen data mnist` under its old name, so older instructions still work: see `nfgen data mnist --help`."""

import sys

from nfgen.cli.app import app

if __name__ == "__main__":
    app(["data", "mnist", *sys.argv[1:]], prog_name="nfgen")
