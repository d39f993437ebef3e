"""`nfgen data digits` under its old name, so older instructions still work: see `nfgen data digits --help`."""

import sys

from nfgen.cli.app import app

if __name__ == "__main__":
    app(["data", "digits", *sys.argv[1:]], prog_name="nfgen")
