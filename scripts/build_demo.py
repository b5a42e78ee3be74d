"""Build the embedded demo corpus and tokenizer (no network): python scripts/build_demo.py [--out data/demo]"""

import argparse
import logging

from tinyllama.demo_corpus import DEMO_DIR, build_demo
from tinyllama.utils import entry_point, setup_logging


@entry_point
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(DEMO_DIR), help="output folder (default: data/demo)")
    args = parser.parse_args()
    setup_logging()
    for name, path in build_demo(args.out).items():
        logging.getLogger("build_demo").info("%-14s %s", name, path)


if __name__ == "__main__":
    main()
