"""``prompt-pool`` command line (the L2P task-sequence runner lands with its issue)."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="prompt-pool", description=__doc__)
    parser.parse_args(argv)


if __name__ == "__main__":
    main()
