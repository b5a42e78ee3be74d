"""Prepare raw corpora into packed token shards for pretraining (see docs/data.md).

    python scripts/prepare_data.py --config configs/data/demo.yaml [--key value ...]

A rerun resumes an interrupted preparation and skips finished sources; --help lists every option.
"""

from tinyllama.data.prepare import prepare_data
from tinyllama.utils import entry_point, setup_logging


@entry_point
def main() -> None:
    setup_logging()
    out = prepare_data()
    print(out)


if __name__ == "__main__":
    main()
