"""``decoding`` command line: build tiny offline models (generation and scoring land with the heads)."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="decoding", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("tiny", help="build a seeded tiny HF causal LM + tokenizer into a folder (offline)")
    tiny.add_argument("out", help="target folder (must not exist or be empty)")
    tiny.add_argument("--arch", choices=["llama", "gpt2"], default="llama")
    tiny.add_argument("--hidden", type=int, default=64)
    tiny.add_argument("--layers", type=int, default=2)
    tiny.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "tiny":
        from decoding.tiny import build_tiny_lm

        path = build_tiny_lm(args.out, arch=args.arch, hidden=args.hidden, layers=args.layers, seed=args.seed)
        print(path)


if __name__ == "__main__":
    main()
