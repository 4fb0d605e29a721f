import { createRequire as __WEBPACK_EXTERNAL_createRequire } from "module";
/******/ // The require scope
/******/ var __nccwpck_require__ = {};
/******/ 
/************************************************************************/
/******/ /* webpack/runtime/define property getters */
/******/ (() => {
/******/ 	// define getter functions for harmony exports
/******/ 	__nccwpck_require__.d = (exports, definition) => {
/******/ 		for(var key in definition) {
/******/ 			if(__nccwpck_require__.o(definition, key) && !__nccwpck_require__.o(exports, key)) {
/******/ 				Object.defineProperty(exports, key, { enumerable: true, get: definition[key] });
/******/ 			}
/******/ 		}
/******/ 	};
/******/ })();
/******/ 
/******/ /* webpack/runtime/hasOwnProperty shorthand */
/******/ (() => {
/******/ 	__nccwpck_require__.o = (obj, prop) => (Object.prototype.hasOwnProperty.call(obj, prop))
/******/ })();
/******/ 
/************************************************************************/
var __webpack_exports__ = {};

// EXPORTS
__nccwpck_require__.d(__webpack_exports__, {
  F: () => (/* binding */ createSegmentHasher)
});

;// CONCATENATED MODULE: external "node:crypto"
const external_node_crypto_namespaceObject = __WEBPACK_EXTERNAL_createRequire(import.meta.url)("node:crypto");
;// CONCATENATED MODULE: external "node:fs"
const external_node_fs_namespaceObject = __WEBPACK_EXTERNAL_createRequire(import.meta.url)("node:fs");
;// CONCATENATED MODULE: external "node:worker_threads"
const external_node_worker_threads_namespaceObject = __WEBPACK_EXTERNAL_createRequire(import.meta.url)("node:worker_threads");
;// CONCATENATED MODULE: external "node:zlib"
const external_node_zlib_namespaceObject = __WEBPACK_EXTERNAL_createRequire(import.meta.url)("node:zlib");
;// CONCATENATED MODULE: ./lib/formats/zstd-context.js

/**
 * One decompression context and one output buffer for many frames: decoding the 2.1 GB of
 * 128 KiB frames of the 4 GiB bench disk took 1.4 s of CPU this way, 2.0 s with one-shot calls.
 */
class ZstdFrameDecoder {
    engine;
    out = Buffer.alloc(0);
    usable = true;
    /** the largest window a frame may need (the caller also checks each header) */
    windowLog;
    // no parameter property: worker threads run from the sources in tests, under Node's type
    // stripping, which does not take them
    constructor(windowLog) {
        this.windowLog = windowLog;
    }
    /**
     * Decodes `frame` (exactly one whole frame) that must give exactly `want` bytes. The result
     * is a view of a buffer the next call overwrites, or of `into` from `at` when given (it needs
     * room for `want + 1` bytes there); undefined: use the one-shot path instead.
     */
    decode(frame, want, into, at = 0) {
        if (!this.usable)
            return undefined;
        const e = (this.engine ??= this.create());
        const h = e._handle;
        const state = e._writeState;
        if (!h || typeof h.writeSync !== 'function' || !state || e._finishFlushFlag === undefined) {
            this.usable = false; // this Node has another engine shape
            return undefined;
        }
        // one byte more than wanted, so a frame that would give more cannot end on a full buffer
        let out = into;
        if (!out || out.length < at + want + 1) {
            if (this.out.length < want + 1)
                this.out = Buffer.allocUnsafe(want + 1);
            out = this.out;
            at = 0;
        }
        try {
            h.writeSync(e._finishFlushFlag, frame, 0, frame.length, out, at, want + 1);
        }
        catch {
            this.engine = undefined;
            return undefined;
        }
        const got = want + 1 - state[0];
        if (!e._handle || state[1] !== 0 || got !== want) {
            this.engine = undefined;
            return undefined;
        }
        return out.subarray(at, at + want);
    }
    create() {
        const e = external_node_zlib_namespaceObject.createZstdDecompress({ params: { [external_node_zlib_namespaceObject.constants.ZSTD_d_windowLogMax]: this.windowLog } });
        // a bad frame makes the engine emit 'error' on the next tick: already handled by returning
        // undefined, so it must not become an uncaught exception
        e.on('error', () => undefined);
        return e;
    }
}
/**
 * One compression context for many frames, each a whole zstd frame with its content size in
 * the header (zstd takes the size from the input when a frame is compressed in one call), no
 * checksum. Measured on 256 MiB of the bench disk in 128 KiB frames: 0.76 s against 0.81 s with
 * one-shot calls, byte-identical output.
 */
class ZstdFrameEncoder {
    engine;
    usable = true;
    level;
    constructor(level) {
        this.level = level;
    }
    /** The most bytes a frame of `n` bytes compresses to (zstd's ZSTD_COMPRESSBOUND, rounded up). */
    static bound(n) {
        return n + (n >> 8) + 1024;
    }
    /**
     * Compresses `src` into `out` from `at` (room for `bound(src.length)` bytes); returns the
     * frame's length, or undefined: use the one-shot call instead.
     */
    encode(src, out, at) {
        if (!this.usable)
            return undefined;
        const e = (this.engine ??= this.create());
        const h = e._handle;
        const state = e._writeState;
        if (!h || typeof h.writeSync !== 'function' || !state) {
            this.usable = false;
            return undefined;
        }
        const room = Math.min(out.length - at, ZstdFrameEncoder.bound(src.length));
        try {
            h.writeSync(zlib.constants.ZSTD_e_end, src, 0, src.length, out, at, room);
        }
        catch {
            this.engine = undefined;
            return undefined;
        }
        // all input taken and room left over: the frame is complete (zstd stops early only when the
        // output is full)
        if (!e._handle || state[1] !== 0 || state[0] === 0) {
            this.engine = undefined;
            return undefined;
        }
        return room - state[0];
    }
    create() {
        const e = zlib.createZstdCompress({
            params: {
                [zlib.constants.ZSTD_c_compressionLevel]: this.level,
                [zlib.constants.ZSTD_c_checksumFlag]: 0,
            },
        });
        e.on('error', () => undefined);
        return e;
    }
}

;// CONCATENATED MODULE: ./lib/formats/zstd-frame.js
const MAGIC = 0xfd2fb528;
/** undefined when `b` does not start with a zstd frame header. */
function zstdFrameHeader(b) {
    if (b.length < 6)
        return undefined;
    const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
    if (v.getUint32(0, true) !== MAGIC)
        return undefined;
    const fhd = b[4];
    if (fhd & 0x08)
        return undefined; // reserved bit must be zero
    const fcsFlag = fhd >> 6;
    const single = (fhd >> 5) & 1;
    const dictFlag = fhd & 3;
    let at = 5;
    let windowSize = 0;
    if (!single) {
        const wd = b[at++];
        const exp = wd >> 3;
        const base = 2 ** (10 + exp);
        windowSize = base + (base / 8) * (wd & 7);
    }
    at += [0, 1, 2, 4][dictFlag];
    const fcsBytes = fcsFlag === 0 ? single : [0, 2, 4, 8][fcsFlag];
    if (at + fcsBytes > b.length)
        return undefined;
    let contentSize;
    if (fcsBytes === 1)
        contentSize = b[at];
    else if (fcsBytes === 2)
        contentSize = v.getUint16(at, true) + 256;
    else if (fcsBytes === 4)
        contentSize = v.getUint32(at, true);
    else if (fcsBytes === 8) {
        const big = v.getBigUint64(at, true);
        contentSize = big > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(big);
    }
    if (single)
        windowSize = contentSize ?? 0;
    return { contentSize, windowSize };
}
/** The declared content size, or undefined (no header, or no size in it). */
function zstdFrameContentSize(b) {
    return zstdFrameHeader(b)?.contentSize;
}

;// CONCATENATED MODULE: ./lib/transfer/run-writer.js

/**
 * The most bytes per write call. Linux sizes the page-cache folios of a buffered write by the
 * call's length; on a VM whose free memory goes back to the host (free page reporting, as here),
 * folios of 64 KiB and more come from memory the host must fault in again: 2.3 GB written in
 * 128 KiB-8 MiB calls took 3-5 s of system time, in 32 KiB calls 0.7-1.1 s (16 KiB: no better;
 * the whole pull: 4.5 s against 5.9 s). This is also what `zstd -d` writes.
 */
const PIECE = 32 << 10;
/**
 * The output writes of the block threads (block-ops.ts), all into one file. Two threads writing
 * one file at the same time cost this machine (Linux 6.18, ext4, a 2-core VM) 1-8 s of system
 * time for 2.3 GB that one thread writes in 0.6 s: the inode's lock is spun on and handed back
 * and forth (measured with two worker threads; a user-space lock around the writes brought it
 * back to 0.6 s). So the threads take turns through a lock in shared memory, and each turn writes
 * all the blocks a thread has verified since its last turn.
 */
class RunWriter {
    fd;
    /** queued pieces: disk offset, offset in the caller's buffer, length */
    runs = [];
    path;
    size;
    lock;
    // no parameter properties: worker threads run from the sources in tests under Node's type
    // stripping, which does not take them
    /** `lock`: one Int32 in a SharedArrayBuffer, shared by every thread writing `path` */
    constructor(path, size, lock) {
        this.path = path;
        this.size = size;
        this.lock = lock;
    }
    /** Queues `length` bytes at `from` in the buffer the next `flush` gets, for disk offset `at`. */
    add(at, from, length) {
        this.runs.push(at, from, length);
    }
    /** Writes the queued pieces of `buf` in one turn and forgets them. */
    flush(buf) {
        const r = this.runs;
        if (r.length === 0)
            return;
        this.acquire();
        try {
            for (let i = 0; i < r.length; i += 3)
                this.write(buf.subarray(r[i + 1], r[i + 1] + r[i + 2]), r[i]);
        }
        finally {
            this.release();
            r.length = 0;
        }
    }
    close() {
        if (this.fd !== undefined)
            (0,external_node_fs_namespaceObject.closeSync)(this.fd);
        this.fd = undefined;
    }
    /** the last block is clipped to the disk size */
    write(buf, offset) {
        this.fd ??= (0,external_node_fs_namespaceObject.openSync)(this.path, 'r+');
        const n = Math.min(buf.length, this.size - offset);
        for (let done = 0; done < n;)
            done += (0,external_node_fs_namespaceObject.writeSync)(this.fd, buf, done, Math.min(n - done, PIECE), offset + done);
    }
    acquire() {
        const l = this.lock;
        if (!l)
            return;
        // a timed wait, so a thread being terminated is never parked for good on a lock whose
        // holder was terminated first
        while (Atomics.compareExchange(l, 0, 0, 1) !== 0)
            Atomics.wait(l, 0, 1, 100);
    }
    release() {
        const l = this.lock;
        if (!l)
            return;
        Atomics.store(l, 0, 0);
        Atomics.notify(l, 0, 1);
    }
}

;// CONCATENATED MODULE: ./lib/transfer/block-ops.js






/**
 * The work of a v2 pull that touches block bytes, run in worker threads (hash-worker.ts in
 * `blocks` mode) so decoding and hashing gigabytes never occupy the main thread:
 *
 *   frames  decode zstd frames (the spec's rules: declared size = blocks x block size, output
 *           capped, window bounded), check every needed slot's sha256 against its entry, and
 *           only then write the slot to every disk offset that uses it;
 *   base    read blocks of a local base disk, hash them, and write those that match the wanted
 *           digest to their destinations (same offset or moved content); report every digest
 *           read so the caller can find moved blocks.
 *
 * Zero blocks are never written (the output is sparse; a device is zeroed by the caller). The
 * last block is clipped to the disk size. Pure Node built-ins plus the zstd header reader.
 */
/**
 * A digest that owns its 32 bytes: a view into the index's digest table would make every message
 * to a worker copy the whole table (structured clone copies a view's entire buffer).
 */
function ownDigest(idx, i) {
    return new Uint8Array(idx.digests.subarray(i * 32, i * 32 + 32));
}
/** verified blocks gathered for one turn of writing (per thread) */
const TURN_BYTES = 16 << 20;
const MAX_WINDOW_LOG = 23;
const MAX_WINDOW = 2 ** MAX_WINDOW_LOG;
/**
 * decodeFrame's rules (src/formats/disk-index-decode.ts), repeated because a worker thread run
 * from the sources (tests) cannot load disk-index.ts under Node's type stripping: the declared
 * content size must be blocks x block size, the window at most 8 MiB, the output capped.
 */
function decodeFrameBytes(compressed, blocks, blockSize, decoder, into, at = 0) {
    const want = blocks * blockSize;
    const h = zstdFrameHeader(compressed);
    if (!h)
        throw new Error('is not a zstd frame');
    if (h.contentSize !== want)
        throw new Error(`declares ${h.contentSize ?? 'no'} bytes, the index says ${want}`);
    if (h.windowSize > MAX_WINDOW)
        throw new Error(`needs a ${h.windowSize}-byte window`);
    // the reused context; a frame it cannot decode whole is decoded again below for the error
    const fast = decoder?.decode(compressed, want, into, at);
    if (fast)
        return fast;
    let out;
    try {
        // one output buffer of the declared size: no growing and joining of 16 KiB pieces
        out = external_node_zlib_namespaceObject.zstdDecompressSync(compressed, { maxOutputLength: want, chunkSize: want });
    }
    catch (err) {
        throw new Error(`does not decompress: ${err.message}`);
    }
    if (out.length !== want)
        throw new Error(`decompressed to ${out.length} bytes, not ${want}`);
    return out;
}
function createBlockOps(d) {
    const bases = new Map();
    const bs = d.blockSize;
    const decoder = new ZstdFrameDecoder(MAX_WINDOW_LOG);
    const writer = new RunWriter(d.out, d.size, d.writeLock);
    // verified blocks wait here for one turn of writing; a frame (at most 8 MiB, checked below) and
    // a block (at most 1 MiB, the index's rule) always fit
    const turn = Buffer.allocUnsafe(TURN_BYTES + 1);
    let used = 0;
    const endTurn = () => {
        writer.flush(turn);
        used = 0;
    };
    /** room for `n` more bytes and the decoder's spare byte: ends the turn when it is full */
    const room = (n) => {
        if (used + n + 1 > turn.length)
            endTurn();
    };
    const frames = (data, jobs) => {
        const bad = [];
        let blocks = 0;
        try {
            for (const j of jobs) {
                let raw;
                const want = j.blocks * bs;
                try {
                    if (j.at < 0 || j.at + j.length > data.length)
                        throw new Error('lies outside the bytes received');
                    // the index allows at most 1 MiB per frame; this thread cannot load its rules, so bound it here too
                    if (!Number.isSafeInteger(want) || want <= 0 || want > MAX_WINDOW)
                        throw new Error(`holds ${j.blocks} blocks`);
                    room(want);
                    raw = decodeFrameBytes(data.subarray(j.at, j.at + j.length), j.blocks, bs, decoder, turn, used);
                }
                catch (e) {
                    bad.push({ f: j.f, why: e.message });
                    continue;
                }
                // the one-shot fallback decodes elsewhere
                if (raw.buffer !== turn.buffer || raw.byteOffset !== turn.byteOffset + used)
                    turn.set(raw, used);
                // every slot verified before any is queued: a bad frame leaves nothing behind
                let why;
                for (const s of j.slots) {
                    const got = (0,external_node_crypto_namespaceObject.hash)('sha256', turn.subarray(used + s.slot * bs, used + (s.slot + 1) * bs), 'buffer');
                    if (!got.equals(s.digest)) {
                        why = `block ${s.slot} has sha256 ${got.toString('hex').slice(0, 12)}, the index says ${Buffer.from(s.digest).toString('hex').slice(0, 12)}`;
                        break;
                    }
                }
                if (why) {
                    bad.push({ f: j.f, why });
                    continue;
                }
                for (const s of j.slots) {
                    for (const o of s.offsets)
                        writer.add(o, used + s.slot * bs, bs);
                    blocks += s.offsets.length;
                }
                used += want;
            }
        }
        finally {
            endTurn();
        }
        return { op: 'frames', bad, blocks };
    };
    const base = (m) => {
        let fd = bases.get(m.path);
        if (fd === undefined)
            bases.set(m.path, (fd = (0,external_node_fs_namespaceObject.openSync)(m.path, 'r')));
        const matched = new Uint8Array(m.items.length);
        const digests = m.collect ? new Uint8Array(32 * m.items.length) : undefined;
        try {
            m.items.forEach((it, i) => {
                room(bs);
                const block = turn.subarray(used, used + bs);
                block.fill(0);
                const n = Math.max(0, Math.min(bs, m.size - it.src));
                for (let got = 0; got < n;) {
                    const r = (0,external_node_fs_namespaceObject.readSync)(fd, block, got, n - got, it.src + got);
                    if (r === 0)
                        break;
                    got += r;
                }
                const h = (0,external_node_crypto_namespaceObject.hash)('sha256', block, 'buffer');
                digests?.set(h, 32 * i);
                if (!h.equals(it.digest))
                    return;
                matched[i] = 1;
                if (!m.write)
                    return;
                for (const o of it.dst)
                    writer.add(o, used, bs);
                used += bs;
            });
        }
        finally {
            endTurn();
        }
        return { op: 'base', matched, ...(digests ? { digests } : {}) };
    };
    return {
        run: (m) => (m.op === 'frames' ? frames(m.data, m.frames) : base(m)),
        close: () => {
            writer.close();
            for (const fd of bases.values())
                (0,external_node_fs_namespaceObject.closeSync)(fd);
            bases.clear();
        },
    };
}

;// CONCATENATED MODULE: ./lib/transfer/hash-worker.js




const BUF = 4 << 20;
function createSegmentHasher(path) {
    const hash = (0,external_node_crypto_namespaceObject.createHash)('sha256');
    const buf = Buffer.allocUnsafe(BUF);
    const zeros = Buffer.alloc(BUF);
    let fd;
    return (m) => {
        try {
            if (m.type === 'file') {
                fd ??= (0,external_node_fs_namespaceObject.openSync)(path, 'r');
                let left = m.length;
                let pos = m.offset;
                while (left > 0) {
                    const n = (0,external_node_fs_namespaceObject.readSync)(fd, buf, 0, Math.min(left, buf.length), pos);
                    if (n === 0)
                        throw new Error(`file ended at ${pos}`);
                    hash.update(n === buf.length ? buf : buf.subarray(0, n));
                    left -= n;
                    pos += n;
                }
            }
            else if (m.type === 'zeros') {
                for (let left = m.length; left > 0;) {
                    const n = Math.min(left, zeros.length);
                    hash.update(n === zeros.length ? zeros : zeros.subarray(0, n));
                    left -= n;
                }
            }
            else {
                if (fd !== undefined)
                    (0,external_node_fs_namespaceObject.closeSync)(fd);
                fd = undefined;
                return { digest: 'sha256:' + hash.digest('hex') };
            }
        }
        catch (e) {
            return { error: e instanceof Error ? e.message : String(e) };
        }
        return undefined;
    };
}
if (external_node_worker_threads_namespaceObject.parentPort && external_node_worker_threads_namespaceObject.workerData.mode === 'blocks') {
    const port = external_node_worker_threads_namespaceObject.parentPort;
    const ops = createBlockOps(external_node_worker_threads_namespaceObject.workerData);
    port.on('message', (msg) => {
        if ('close' in msg) {
            ops.close();
            port.postMessage({ closed: true });
            return;
        }
        try {
            const r = ops.run(msg.m);
            const transfer = r.op === 'base'
                ? [r.matched.buffer, ...(r.digests ? [r.digests.buffer] : [])]
                : [];
            port.postMessage({ id: msg.id, r }, transfer);
        }
        catch (e) {
            port.postMessage({ id: msg.id, error: e instanceof Error ? e.message : String(e) });
        }
    });
}
else if (external_node_worker_threads_namespaceObject.parentPort) {
    const port = external_node_worker_threads_namespaceObject.parentPort;
    const step = createSegmentHasher(external_node_worker_threads_namespaceObject.workerData.path);
    port.on('message', (m) => {
        const reply = step(m);
        if (reply)
            port.postMessage(reply);
    });
}

var __webpack_exports__createSegmentHasher = __webpack_exports__.F;
export { __webpack_exports__createSegmentHasher as createSegmentHasher };
