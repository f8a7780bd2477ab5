/**
 * native.ts — loads the peftkit addon.
 *
 * Order: a local build (build/Release, from `npm install` or `npm run build:native`), then the
 * prebuilt binary for this platform (prebuilds/<platform>-<arch>/peftkit.node), else an error
 * that says exactly how to build. The addon is context-aware, so each worker_thread loads its own
 * instance.
 */
import * as fs from 'fs';
import * as path from 'path';

/** The JS handle of a native tensor (csrc/addon/js_tensor.cpp). */
export interface NativeTensor {
  readonly shape: number[];
  readonly strides: number[];
  readonly offset: number;
  readonly dtype: string;
  readonly device: string;
  readonly disposed: boolean;
  readonly isContiguous: boolean;
  readonly storageId: number;
  dispose(): void;
}

/* eslint-disable @typescript-eslint/no-explicit-any */
/** Raw addon exports: functions registered with PK_BIND in csrc/addon/bind_*.cpp. */
export type NativeAddon = Record<string, (...args: any[]) => any>;

const root = path.resolve(__dirname, '..');

function candidates(): string[] {
  const out: string[] = [];
  if (process.env.PEFTKIT_ADDON) out.push(path.resolve(process.env.PEFTKIT_ADDON));
  out.push(path.join(root, 'build', 'Release', 'peftkit.node'));
  out.push(path.join(root, 'prebuilds', `${process.platform}-${process.arch}`, 'peftkit.node'));
  return out;
}

function load(): { addon: NativeAddon; file: string } {
  const tried: string[] = [];
  for (const file of candidates()) {
    if (!fs.existsSync(file)) { tried.push(`${file} (missing)`); continue; }
    try {
      // eslint-disable-next-line @typescript-eslint/no-var-requires
      return { addon: require(file) as NativeAddon, file };
    } catch (e) {
      tried.push(`${file} (${(e as Error).message.split('\n')[0]})`);
    }
  }
  throw new Error(
    'peftkit: the native addon could not be loaded. Tried:\n  ' + tried.join('\n  ') +
    '\nBuild it with `npm rebuild peftkit` (in a checkout: `npm run build:native`); this needs cmake >= 3.18 ' +
    'and a C++17 compiler. Set PEFTKIT_ADDON=/path/to/peftkit.node to use a specific binary.');
}

const loaded = load();
/** The loaded addon (loaded once per JS context). */
export const native: NativeAddon = loaded.addon;
/** The path of the loaded addon binary (for child processes and diagnostics). */
export const addonFile: string = loaded.file;
