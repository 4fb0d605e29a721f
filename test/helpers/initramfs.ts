// The initramfs builder moved to src/guest/ (orb demo builds guests too).
export * from '../../src/guest/initramfs.js';
export { guestCacheDir as testCacheDir } from '../../src/guest/initramfs.js';
