// The cpio writer moved to src/guest/ (orb demo builds guests too).
export * from '../../src/guest/cpio.js';
