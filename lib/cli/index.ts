#!/usr/bin/env node
/**
 * cli — the `peftkit` command. `main(argv)` takes the arguments after the program name and
 * returns the exit code: synchronously for `inspect` and usage errors, as a promise for the
 * long-running commands (the bin script awaits it and exits with the code).
 *
 *   peftkit inspect <dir> [--json]                 architecture, parameters, dtype, memory per dtype and NF4
 *   peftkit train [config.json|yaml] [--flags]     fine-tune: model + adapter + data → trained adapter
 *   peftkit merge --model --adapter --out          merge an adapter into the base weights
 *   peftkit generate --model [--adapter] --prompt  generate text
 */
import { formatReport, inspectModel } from './inspect';
import { runDemo } from './demo';
import { runGenerate } from './generate';
import { runMerge } from './merge';
import { runTrain } from './train';

const USAGE = `usage: peftkit <command> [options]

commands:
  inspect <dir> [--json]   describe a HuggingFace model folder (config.json + safetensors):
                           architecture, parameter count, dtype, memory per dtype and for NF4
  train [config] [opts]    fine-tune a model with an adapter (LoRA by default) on a dataset;
                           config: JSON or a YAML subset; \`peftkit train --help\` for the options
  merge --model DIR --adapter DIR --out DIR [--dtype bf16]
                           merge a PEFT adapter into the base weights (a standalone model folder)
  generate --model DIR [--adapter DIR] [--prompt TEXT] [--chat] [--max-new-tokens N]
                           generate a completion (streamed); \`peftkit generate --help\`
  demo [options]           the main job: QLoRA fine-tuning of the shipped WordNet model on a
                           definition task, with held-out metrics and forgetting before/after
  help                     this text`;

export function main(argv: string[], out: (s: string) => void = (s) => process.stdout.write(s + '\n'),
                     err: (s: string) => void = (s) => process.stderr.write(s + '\n')): number | Promise<number> {
  const [cmd, ...rest] = argv;
  if (!cmd || cmd === 'help' || cmd === '--help' || cmd === '-h') { out(USAGE); return cmd ? 0 : 1; }
  if (cmd === 'inspect') {
    const json = rest.includes('--json');
    const dirs = rest.filter((a) => !a.startsWith('--'));
    const unknown = rest.filter((a) => a.startsWith('--') && a !== '--json');
    if (unknown.length) { err(`peftkit inspect: unknown option ${unknown[0]}\n${USAGE}`); return 2; }
    if (dirs.length !== 1) { err(`peftkit inspect: expected one model folder\n${USAGE}`); return 2; }
    try {
      const r = inspectModel(dirs[0]);
      out(json ? JSON.stringify(r, null, 2) : formatReport(r));
      return 0;
    } catch (e) {
      err(`peftkit inspect: ${(e as Error).message}`);
      return 1;
    }
  }
  if (cmd === 'train') return runTrain(rest, out, err);
  if (cmd === 'merge') return runMerge(rest, out, err);
  if (cmd === 'generate') return runGenerate(rest, out, err);
  if (cmd === 'demo') return runDemo(rest, out, err);
  err(`peftkit: unknown command '${cmd}'\n${USAGE}`);
  return 2;
}

export { inspectModel, formatReport } from './inspect';
export type { InspectReport } from './inspect';
export { runTrain, parseYaml, readConfigFile, resolveJob } from './train';
export { runMerge } from './merge';
export { runGenerate } from './generate';
export { runDemo } from './demo';

if (require.main === module) {
  Promise.resolve(main(process.argv.slice(2))).then((code) => process.exit(code), (e) => { process.stderr.write(`peftkit: ${(e as Error).stack ?? e}\n`); process.exit(1); });
}
