import { execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32, inflateSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { buildQemuArgs, formatFor, parseUsernet, qesc, type QemuPlan } from '../../src/qemu/args.js';
import { encodePng, parsePpm, screenStats } from '../../src/qemu/png.js';
import { readCpio, writeCpio } from '../helpers/cpio.js';

/** Decodes our own PNGs (8-bit RGB, filters None/Up) and checks every chunk CRC. */
function decodePng(png: Buffer): { width: number; height: number; rgb: Buffer } {
  expect(png.subarray(0, 8).toString('hex')).toBe('89504e470d0a1a0a');
  let off = 8;
  let width = 0;
  let height = 0;
  const idat: Buffer[] = [];
  let sawEnd = false;
  while (off < png.length) {
    const len = png.readUInt32BE(off);
    const type = png.toString('ascii', off + 4, off + 8);
    const data = png.subarray(off + 8, off + 8 + len);
    expect(png.readUInt32BE(off + 8 + len)).toBe(crc32(png.subarray(off + 4, off + 8 + len)));
    if (type === 'IHDR') {
      width = data.readUInt32BE(0);
      height = data.readUInt32BE(4);
      expect([data[8], data[9]]).toEqual([8, 2]);
    } else if (type === 'IDAT') idat.push(data);
    else if (type === 'IEND') sawEnd = true;
    off += 12 + len;
  }
  expect(sawEnd).toBe(true);
  const raw = inflateSync(Buffer.concat(idat));
  const stride = width * 3;
  const rgb = Buffer.alloc(stride * height);
  for (let y = 0; y < height; y++) {
    const f = raw[y * (stride + 1)];
    for (let x = 0; x < stride; x++) {
      const v = raw[y * (stride + 1) + 1 + x]!;
      rgb[y * stride + x] = f === 2 && y > 0 ? (v + rgb[(y - 1) * stride + x]!) & 0xff : v;
    }
  }
  return { width, height, rgb };
}

const basePlan: QemuPlan = {
  arch: 'x86_64',
  accel: 'tcg',
  memoryMiB: 128,
  cpus: 1,
  name: 't',
  disks: [],
  cdroms: [],
  bootFrom: 'disk',
  firmware: 'bios',
  qmpSocket: '/tmp/q.sock',
  vga: 'VGA',
  noReboot: false,
  paused: true,
  extraArgs: [],
};

describe('PPM -> PNG', () => {
  it('round-trips pixels through our encoder and reports screen statistics', () => {
    const w = 37;
    const h = 11;
    const rgb = Buffer.alloc(w * h * 3);
    for (let i = 0; i < w * h; i++) rgb.set([(i * 7) & 0xff, (i * 13) & 0xff, i % 3 === 0 ? 255 : 0], i * 3);
    const ppm = Buffer.concat([Buffer.from(`P6\n# comment\n${w} ${h}\n255\n`), rgb]);
    const img = parsePpm(ppm);
    expect(img).toMatchObject({ width: w, height: h });
    const back = decodePng(encodePng(img));
    expect(back.width).toBe(w);
    expect(back.rgb.equals(rgb)).toBe(true);
    const black = screenStats({ width: 4, height: 2, rgb: Buffer.alloc(24) });
    expect(black).toMatchObject({
      allBlack: true,
      meanBrightness: 0,
      distinctColors: 1,
      nonBackgroundFraction: 0,
    });
    const s = screenStats(img);
    expect(s.allBlack).toBe(false);
    expect(s.distinctColors).toBeGreaterThan(10);
  });

  it('rejects truncated or foreign images with a clear error', () => {
    expect(() => parsePpm(Buffer.from('P6\n4 4\n255\n\x00\x00'))).toThrow(/truncated/);
    expect(() => parsePpm(Buffer.from('P3\n1 1\n255\n0 0 0'))).toThrow(/unsupported PPM/);
  });
});

describe('cpio newc writer', () => {
  it('writes archives GNU cpio reads: files, dirs, symlinks, device nodes', () => {
    const arc = writeCpio([
      { type: 'dir', path: '/bin' },
      { type: 'file', path: '/bin/hello', data: Buffer.from('#!/bin/sh\necho hi\n'), mode: 0o755 },
      { type: 'symlink', path: '/bin/sh', target: 'busybox' },
      { type: 'dir', path: '/dev' },
      { type: 'chardev', path: '/dev/console', major: 5, minor: 1 },
      { type: 'file', path: '/odd', data: Buffer.from('x') },
    ]);
    expect(arc.length % 4).toBe(0);
    const listing = execFileSync('cpio', ['-itv', '--quiet'], { input: arc, encoding: 'utf8' });
    expect(listing).toMatch(/-rwxr-xr-x .* bin\/hello/);
    expect(listing).toMatch(/lrwxrwxrwx .* bin\/sh -> busybox/);
    expect(listing).toMatch(/crw------- .* 5,\s+1 .* dev\/console/);
    const dir = mkdtempSync(join(tmpdir(), 'orb-cpio-'));
    execFileSync('cpio', ['-id', '--quiet', '--no-absolute-filenames'], {
      input: arc,
      cwd: dir,
      stdio: ['pipe', 'ignore', 'ignore'],
    });
    expect(execFileSync('cat', [join(dir, 'bin/hello')], { encoding: 'utf8' })).toContain('echo hi');
    const parsed = readCpio(arc);
    expect(parsed.map((e) => e.name)).toEqual(['bin', 'bin/hello', 'bin/sh', 'dev', 'dev/console', 'odd']);
  });
});

describe('QEMU arguments', () => {
  it('binds every host forward to 127.0.0.1 and escapes commas in paths', () => {
    const args = buildQemuArgs({
      ...basePlan,
      disks: [
        { path: '/img/a,b.qcow2', format: 'qcow2', snapshot: true, interface: 'sata' },
        { path: '/img/c.img', interface: 'nvme', discard: true },
      ],
      network: {
        forwards: [
          { guestPort: 3389 },
          { guestPort: 8006, hostPort: 18006 },
          { guestPort: 53, protocol: 'udp' },
        ],
      },
    });
    const netdev = args[args.indexOf('-netdev') + 1]!;
    expect(netdev).toBe(
      'user,id=net0,hostfwd=tcp:127.0.0.1:0-:3389,hostfwd=tcp:127.0.0.1:18006-:8006,hostfwd=udp:127.0.0.1:0-:53',
    );
    expect(args).toContain('file=/img/a,,b.qcow2,if=none,id=disk0,format=qcow2,snapshot=on');
    expect(args).toContain('ide-hd,drive=disk0,bus=ide.0,bootindex=0');
    expect(args).toContain('file=/img/c.img,if=none,id=disk1,format=raw,discard=unmap,detect-zeroes=unmap');
    expect(args).toContain('nvme,drive=disk1,serial=orb-disk-1,bootindex=1');
    expect(() => buildQemuArgs({ ...basePlan, network: { forwards: [{ guestPort: 70000 }] } })).toThrow(
      /invalid guestPort/,
    );
    expect(qesc('a,b,,c')).toBe('a,,b,,,,c');
    expect([formatFor('x.QCOW2'), formatFor('x.img'), formatFor('x.vhdx')]).toEqual(['qcow2', 'raw', 'vhdx']);
  });

  it('boots from the CD-ROM first when asked, and sets up Secure Boot with SMM', () => {
    const args = buildQemuArgs({
      ...basePlan,
      disks: [{ path: '/d.img' }],
      cdroms: ['/win.iso', '/virtio.iso'],
      bootFrom: 'cdrom',
      firmware: 'uefi-secure',
      uefi: { code: '/fw/CODE.secboot.fd', vars: '/fw/VARS.ms.fd', secure: true },
      uefiVarsPath: '/work/efivars.fd',
      tpmSocket: '/work/swtpm.sock',
    });
    expect(args).toContain('q35,smm=on');
    expect(args).toContain('driver=cfi.pflash01,property=secure,value=on');
    expect(args).toContain('if=pflash,format=raw,unit=0,readonly=on,file=/fw/CODE.secboot.fd');
    expect(args).toContain('if=pflash,format=raw,unit=1,file=/work/efivars.fd');
    expect(args).toContain('ide-cd,drive=cd0,bus=ide.0,bootindex=0');
    expect(args).toContain('ide-cd,drive=cd1,bus=ide.1,bootindex=1');
    expect(args).toContain('virtio-blk-pci,drive=disk0,bootindex=2');
    expect(args).toContain('tpm-tis,tpmdev=tpm0');
    expect(() => buildQemuArgs({ ...basePlan, arch: 'aarch64' })).toThrow(/no BIOS/);
  });

  it('reads the host ports slirp bound from info usernet', () => {
    const text =
      'Hub -1 (net0):\r\n  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\r\n' +
      '  TCP[HOST_FORWARD]   9       127.0.0.1 43241       10.0.2.15  3389     0     0\r\n' +
      '  UDP[HOST_FORWARD]  10       127.0.0.1 40001       10.0.2.15    53     0     0\r\n';
    expect(parseUsernet(text)).toEqual([
      { protocol: 'tcp', hostAddress: '127.0.0.1', hostPort: 43241, guestPort: 3389 },
      { protocol: 'udp', hostAddress: '127.0.0.1', hostPort: 40001, guestPort: 53 },
    ]);
  });
});
