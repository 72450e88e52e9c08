// Moved to local/local-stack.ts (local mode uses it too); kept so that tests written against the old path still import it.
export * from '../../local/local-stack.ts';
