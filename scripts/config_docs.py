"""Write the key reference in docs/configs.md from the config fields' help (``nfgen config --keys
--markdown``), keeping the page's prose; ``--check`` only says whether it is current.

    python scripts/config_docs.py            # after adding or changing a config field
    python scripts/config_docs.py --check    # exit 1 when docs/configs.md is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nfgen.cli.config_verb import with_reference
from nfgen.cli.support import script_main

PAGE = Path(__file__).resolve().parent.parent / "docs" / "configs.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when the page is stale")
    args = parser.parse_args(argv)
    page = PAGE.read_text()
    current = with_reference(page)
    if current == page:
        print(f"{PAGE} is current")
        return 0
    if args.check:
        print(f"{PAGE} is stale: run python scripts/config_docs.py", file=sys.stderr)
        return 1
    PAGE.write_text(current)
    print(f"wrote the key reference into {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(script_main(main))  # the command line's one-line errors
