#!/usr/bin/env node
// Entry point for `npx lifeboat`. The project is TypeScript run in place with
// tsx, so there is no build step between a checkout and a working CLI.
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../cli/main.ts');
process.exitCode = await main(process.argv.slice(2), process.env);
