"""Command line of the FLOP counter (`arch.flops`): per-layer parameters, forward FLOPs per token and
decode state of a model preset, then the totals (forward, and training = 3 x forward).

    python -m eval.flops model=gla [--seq-len 2048] [--vocab-size V] [any train.py override]
"""

from __future__ import annotations

from arch.flops import layer_table


def main(argv: list[str] | None = None) -> None:
    """``python -m eval.flops model=gla [--seq-len T] [any train.py override]``: per-layer table."""
    import argparse
    import sys

    from omegaconf import OmegaConf

    from arch.lm import LanguageModel
    from training.compose import compose

    parser = argparse.ArgumentParser(
        prog="python -m eval.flops", description="Per-layer parameters, FLOPs and decode state of a model preset."
    )
    parser.add_argument("overrides", nargs="*", help="train.py overrides, e.g. model=gla model.d_model=512")
    parser.add_argument("--seq-len", type=int, default=2048, help="sequence length T for attention FLOPs and KV caches")
    parser.add_argument("--vocab-size", type=int, default=None, help="vocabulary (default: model.vocab_size, else 257 bytes)")
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    cfg = compose(args.overrides)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    vocab = args.vocab_size or model_cfg.get("vocab_size") or 257
    model = LanguageModel.from_config(model_cfg, vocab_size=vocab)
    print(f"model={model_cfg['name']} T={args.seq_len} vocab={vocab}\n")
    print(layer_table(model, args.seq_len))


if __name__ == "__main__":
    main()
