// Reference run: sharp(input).rotate().jpeg({quality: 50}) on every file of
// a corpus, one at a time, inputs held in memory. Prints one JSON line.
//   node sharp-bench.mjs CORPUS_DIR [OUT_DIR] [ROUNDS]
import { readdirSync, readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { join, parse } from "node:path";
import sharp from "sharp";

const [dir, outDir, roundsArg] = process.argv.slice(2);
const rounds = Number(roundsArg ?? 1);
sharp.concurrency(1);
sharp.cache(false);
const files = readdirSync(dir).filter((f) => /\.(jpe?g|png|webp|gif)$/i.test(f)).sort();
const inputs = files.map((f) => readFileSync(join(dir, f)));
if (outDir) mkdirSync(outDir, { recursive: true });

let best = Infinity;
const perImage = new Map();
let bytesOut = 0;
for (let r = 0; r < rounds; r++) {
  bytesOut = 0;
  const start = process.hrtime.bigint();
  for (let i = 0; i < inputs.length; i++) {
    const t0 = process.hrtime.bigint();
    const out = await sharp(inputs[i]).rotate().jpeg({ quality: 50 }).toBuffer();
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    perImage.set(files[i], Math.min(perImage.get(files[i]) ?? Infinity, ms));
    bytesOut += out.length;
    if (outDir && r === 0) writeFileSync(join(outDir, parse(files[i]).name + ".jpg"), out);
  }
  best = Math.min(best, Number(process.hrtime.bigint() - start) / 1e9);
}
console.log(JSON.stringify({
  engine: `sharp ${sharp.versions.sharp} (libvips ${sharp.versions.vips})`,
  images: inputs.length,
  seconds: best,
  images_per_s: inputs.length / best,
  bytes_in: inputs.reduce((a, b) => a + b.length, 0),
  bytes_out: bytesOut,
  peak_rss_mb: process.resourceUsage().maxRSS / 1024,
  per_image_ms: Object.fromEntries(perImage),
}));
