/** What a disk file is, from its first bytes (at least 8), never from its name. */
export function detectFileFormat(head: Buffer): string {
  if (head.subarray(0, 4).toString('latin1') === 'QFI\xfb') return 'qcow2';
  if (head.readUInt32LE(0) === 0xfd2fb528) return 'raw.zst';
  if (head.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) return 'xz';
  if (head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head.subarray(0, 8).toString('latin1') === 'vhdxfile') return 'vhdx';
  if (head.subarray(0, 4).toString('latin1') === 'KDMV') return 'vmdk';
  return 'raw';
}
