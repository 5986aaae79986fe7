#!/usr/bin/env python3
"""The requantisation's λ curve: bytes against DSSIM, SSIMULACRA2 and speed.

    python3 bench/lambda_curve.py [--lambdas 0,30,60,120] [--rounds 3] [--skip-build] [--no-scores]

For each λ (`imgproc-local compress --rdo-lambda`; 0 is plain rounding) the engine compresses
the corpus with one thread pinned to one CPU, interleaved with the other λ
values and with Sharp (rotating the order every round); speed is the
median over rounds of images/s, quality is scored once per λ against the
same reference decodes as bench/compare.py (several minutes per λ;
`--no-scores` leaves the quality columns out, for a speed-only run: the
sizes and scores are deterministic). Prints a Markdown table.
"""

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lambdas", default="0,30,60,120,240")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--corpus", type=Path, default=compare.ROOT / "bench" / "corpus")
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--no-scores", action="store_true", help="skip DSSIM and SSIMULACRA2")
    args = ap.parse_args()
    lambdas = [x.strip() for x in args.lambdas.split(",") if x.strip()]
    files = compare.corpus(args.corpus)
    sd = compare.sharp_dir()
    imgproc, tool = compare.build(args.skip_build)
    outs = {k: Path(tempfile.mkdtemp(prefix=f"lambda-{k}-")) for k in ["sharp"] + lambdas}
    runs = {k: [] for k in outs}
    order = list(outs)
    for r in range(args.rounds):
        for k in order:
            if k == "sharp":
                res = compare.sharp_run(sd, args.corpus, outs[k], args.passes)
            else:
                res = compare.imgproc_run(imgproc, files, outs[k], 1, args.passes, rdo_lambda=k)
            runs[k].append(res)
            compare.log(f"round {r + 1}/{args.rounds} {k}: {res['images_per_s']:.2f} images/s")
        order = order[1:] + order[:1]
    sharp_bytes = runs["sharp"][-1]["bytes_out"]
    q = None if args.no_scores else {
        k: compare.dssim(tool, args.corpus, outs[k], "black" if k == "sharp" else "white") for k in outs}
    quality_head = "" if q is None else " mean DSSIM | × Sharp | worst image × Sharp | mean SSIMULACRA2 |"
    print(f"| λ | bytes | × Sharp |{quality_head} images/s (rounds) | × Sharp |")
    print("|---" * (5 if q is None else 9) + "|")
    for k in outs:
        per_round = [x["images_per_s"] for x in runs[k]]
        speed = [x["images_per_s"] / s["images_per_s"] for x, s in zip(runs[k], runs["sharp"])]
        quality = ""
        if q is not None:
            worst = max(q[k]["per_image"][s] / q["sharp"]["per_image"][s] for s in q[k]["per_image"])
            quality = (f" {q[k]['mean_dssim']:.5f} | {q[k]['mean_dssim'] / q['sharp']['mean_dssim']:.3f} | "
                       f"{worst:.2f} | {q[k]['mean_ssimulacra2']:.2f} |")
        print(f"| {'Sharp' if k == 'sharp' else k} | {runs[k][-1]['bytes_out']:,} | "
              f"{runs[k][-1]['bytes_out'] / sharp_bytes:.3f} |{quality} "
              f"{statistics.median(per_round):.2f} ({', '.join(f'{x:.2f}' for x in per_round)}) | "
              f"{statistics.median(speed):.2f} |")


if __name__ == "__main__":
    main()
