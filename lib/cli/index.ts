#!/usr/bin/env node
/**
 * cli — the `peftkit` command. `main(argv)` takes the arguments after the program name and
 * returns the exit code (the bin script calls `process.exit(main(process.argv.slice(2)))`).
 *
 *   peftkit inspect <dir> [--json]   architecture, parameters, dtype, memory per dtype and NF4
 */
import { formatReport, inspectModel } from './inspect';

const USAGE = `usage: peftkit <command> [options]

commands:
  inspect <dir> [--json]   describe a HuggingFace model folder (config.json + safetensors):
                           architecture, parameter count, dtype, memory per dtype and for NF4
  help                     this text`;

export function main(argv: string[], out: (s: string) => void = (s) => process.stdout.write(s + '\n'),
                     err: (s: string) => void = (s) => process.stderr.write(s + '\n')): number {
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
  err(`peftkit: unknown command '${cmd}'\n${USAGE}`);
  return 2;
}

export { inspectModel, formatReport } from './inspect';
export type { InspectReport } from './inspect';

if (require.main === module) process.exit(main(process.argv.slice(2)));
