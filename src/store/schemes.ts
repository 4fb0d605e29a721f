// Importing this module registers every backend's scheme with open.ts (one line per backend).
export {};
