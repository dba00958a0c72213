"""What the polyphonic evaluation's extra figures cost: JSB's test split scored exact-only, + first frame, + canonical."""

from __future__ import annotations

from collections.abc import Callable

from common import command_line, interleave, median, parse_args, quiet_stdout, spread, timed, write_results

import generate
from generate.scoring import evaluate_loss, score_documents


def main() -> None:
    args = parse_args(__doc__, lambda p: p.add_argument("--checkpoint", default="checkpoints/pretrained/jsb.pt"))
    model = generate.load(args.checkpoint, device=args.device)
    with quiet_stdout():
        docs = model.dataset().splits["test"]
    net, tok, device = model.net, model.tokenizer, model.device

    def variant(fn: Callable[[], object]) -> Callable[[], float]:
        return lambda: timed(fn, device)

    variants = {  # batch_size 64, seq_len 256: generate.evaluate's defaults
        "exact only (the path before)": variant(lambda: evaluate_loss(net, list(docs), tok.separator_id(), 64, 256,
                                                                      device)),
        "+ first frame excluded": variant(lambda: score_documents(net, tok, docs, 64, 256, device, canonical=False)),
        "+ first frame + canonical": variant(lambda: score_documents(net, tok, docs, 64, 256, device, canonical=True)),
    }
    times = interleave(variants, args.repeats)
    base = median(times["exact only (the path before)"])
    rows = [{"evaluation": name, "seconds": spread(t), "vs exact only": f"{median(t) / base:.3f}x"}
            for name, t in times.items()]
    write_results("frame_nll", command_line(), {f"{args.checkpoint}, test split": (rows, list(rows[0]))},
                  extra={"notes": ["median [min-max] over interleaved rounds"]}, device=args.device)


if __name__ == "__main__":
    main()
