// The recording loop of ../shared/reference/seed_bench.js, alone: the same
// engine configuration and the same begin / addTrajectoryStep / end calls on
// the same parsed JSONL, timed the same way, without the cycle and per-call
// parts that follow it there. The ingest benchmark runs it between its own
// repetitions, so ours and the reference's rates are measured minutes apart
// at most (the shared machine's speed drifts by 2x within a full run).
//
// Usage:  NODE_PATH=<node_modules> node reference_record.js TRAJECTORIES.jsonl PATTERN_CLUSTERS
// Prints one JSON line: {"record_per_s": ...}.
const fs = require('fs');
const readline = require('readline');
const { SonaEngine } = require('@ruvector/sona');

async function main() {
  const [path, clusters] = process.argv.slice(2);
  const trajectories = [];
  const lines = readline.createInterface({ input: fs.createReadStream(path) });
  for await (const line of lines) if (line.trim()) trajectories.push(JSON.parse(line));
  const dim = trajectories[0].query_embedding.length;
  const engine = SonaEngine.withConfig({ hiddenDim: dim, patternClusters: Number(clusters) });

  const t0 = process.hrtime.bigint();
  for (const t of trajectories) {
    const id = engine.beginTrajectory(t.query_embedding);
    for (const s of t.steps) engine.addTrajectoryStep(id, s.activations, s.attention_weights, s.reward);
    engine.endTrajectory(id, t.quality);
  }
  const t1 = process.hrtime.bigint();
  console.log(JSON.stringify({ record_per_s: trajectories.length / (Number(t1 - t0) / 1e9) }));
}
main();
