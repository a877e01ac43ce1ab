//! A synthetic but realistic allocator event stream, shared by the codec benchmark and
//! the `codec_stats` example.
//!
//! The program it imitates: a few threads churning through allocations at ~50 call
//! sites (stacks 5 to 20 frames deep, emitted as `StackNode` records when first used),
//! with sizes from 16 B to 1 MiB skewed to small ones, mostly malloc/free pairs and some
//! calloc, realloc and C++ new/delete. Addresses come from a small model of glibc:
//! per-size LIFO free lists (tcache/fastbins), a bump-allocated top chunk in the
//! 0x5555_5556_xxxx region, and mmap'd blocks at 0x7f.. for sizes of 128 KiB and more.
//! Timestamps advance by 100 to 2000 ns per event, skewed to short gaps.

#![allow(dead_code)]

use std::collections::HashMap;

use heaptape_format::{AllocFn, ClockSource, Header, Record, StackId};

/// A small deterministic PRNG (SplitMix64), so runs are comparable.
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() >> 32) * n) >> 32
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The header used for synthetic traces.
pub fn header() -> Header {
    Header {
        tool_version: "heaptape synthetic".into(),
        command: vec!["./app".into(), "--churn".into()],
        pid: 4242,
        start_time_unix_ns: 1_700_000_000_000_000_000,
        host: "bench".into(),
        kernel: "6.1.0".into(),
        page_size: 4096,
        pointer_size: 8,
        clock: ClockSource::Synthetic,
    }
}

/// How a call site chooses its sizes.
#[derive(Clone, Copy)]
enum SizeKind {
    Fixed(u64),
    Small,
    Wide,
}

struct Site {
    stack: StackId,
    free_stack: StackId,
    func: AllocFn,
    size: SizeKind,
    weight: u64,
}

struct Block {
    addr: u64,
    size: u64,
    site: usize,
}

/// glibc-like address model.
struct Heap {
    top: u64,
    bins: HashMap<u64, Vec<u64>>,
    mmap_next: u64,
    mmapped: HashMap<u64, u64>,
}

const MMAP_THRESHOLD: u64 = 128 * 1024;

fn chunk_size(size: u64) -> u64 {
    ((size + 8 + 15) & !15).max(32)
}

impl Heap {
    fn new() -> Self {
        Heap {
            top: 0x5555_5556_02a0,
            bins: HashMap::new(),
            mmap_next: 0x7f3a_1c00_0000,
            mmapped: HashMap::new(),
        }
    }

    fn malloc(&mut self, size: u64) -> u64 {
        if size >= MMAP_THRESHOLD {
            let len = (size + 16 + 4095) & !4095;
            self.mmap_next -= len;
            let addr = self.mmap_next + 16;
            self.mmapped.insert(addr, len);
            return addr;
        }
        let cs = chunk_size(size);
        if let Some(addr) = self.bins.get_mut(&cs).and_then(Vec::pop) {
            return addr;
        }
        let addr = self.top;
        self.top += cs;
        addr
    }

    fn free(&mut self, addr: u64, size: u64) {
        if self.mmapped.remove(&addr).is_some() {
            return;
        }
        self.bins.entry(chunk_size(size)).or_default().push(addr);
    }
}

/// Builds the event stream: `events` allocator events plus the stack nodes, thread
/// starts and module loads they need. Deterministic for a given seed.
pub fn events(events: usize, seed: u64) -> Vec<Record> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(events + 1000);
    let mut ts: u64 = 1_000;
    let pid = 4242u32;
    out.push(Record::ProcessStart {
        ts,
        pid,
        parent_pid: None,
        origin: heaptape_format::ProcessOrigin::Launched,
        command: vec!["./app".into(), "--churn".into()],
    });
    for (i, path) in ["/usr/bin/app", "/usr/lib/x86_64-linux-gnu/libc.so.6"]
        .iter()
        .enumerate()
    {
        out.push(Record::ModuleLoad(Box::new(heaptape_format::ModuleLoad {
            ts,
            pid,
            path: (*path).into(),
            build_id: vec![0xab; 20],
            base: if i == 0 {
                0x5555_5555_4000
            } else {
                0x7f3a_1d20_0000
            },
            segments: vec![heaptape_format::Segment {
                start: if i == 0 {
                    0x5555_5555_4000
                } else {
                    0x7f3a_1d20_0000
                },
                len: 0x20_0000,
                file_offset: 0,
                prot: 5,
            }],
        })));
    }

    // The stack trie: nodes keyed by (parent, address); `nodes[id]` = (parent, address).
    let mut trie: HashMap<(StackId, u64), StackId> = HashMap::new();
    let mut nodes: Vec<(StackId, u64)> = vec![(0, 0)];
    let frame = |rng: &mut Rng| -> u64 {
        if rng.below(3) == 0 {
            0x7f3a_1d20_0000 + rng.below(0x1f_0000)
        } else {
            0x5555_5555_4000 + rng.below(0x20_0000)
        }
    };
    // A few shared outer frames (main, thread entry points, event loop).
    let prefixes: Vec<Vec<u64>> = (0..6)
        .map(|_| (0..3 + rng.below(4)).map(|_| frame(&mut rng)).collect())
        .collect();
    let mut make_stack = |rng: &mut Rng| -> StackId {
        let depth = 5 + rng.below(16) as usize;
        let prefix = &prefixes[rng.below(prefixes.len() as u64) as usize];
        let mut frames: Vec<u64> = prefix.clone();
        while frames.len() < depth {
            frames.push(frame(rng));
        }
        frames.truncate(depth);
        let mut parent = 0;
        for &address in &frames {
            parent = *trie.entry((parent, address)).or_insert_with(|| {
                nodes.push((parent, address));
                (nodes.len() - 1) as StackId
            });
        }
        parent
    };

    let free_sites: Vec<StackId> = (0..15).map(|_| make_stack(&mut rng)).collect();
    let mut sites = Vec::new();
    for i in 0..35 {
        let stack = make_stack(&mut rng);
        let func = match rng.below(20) {
            0..=11 => AllocFn::Malloc,
            12..=13 => AllocFn::Calloc,
            14..=16 => AllocFn::New,
            17 => AllocFn::NewArray,
            _ => AllocFn::Realloc,
        };
        let size = match rng.below(10) {
            0..=5 => SizeKind::Fixed(16 << rng.below(7)),
            6..=8 => SizeKind::Small,
            _ => SizeKind::Wide,
        };
        sites.push(Site {
            stack,
            free_stack: free_sites[i % free_sites.len()],
            func,
            size,
            // Zipf-like popularity.
            weight: 1000 / (i as u64 + 1),
        });
    }
    let total_weight: u64 = sites.iter().map(|s| s.weight).sum();
    let mut emitted = vec![false; nodes.len()];
    emitted[0] = true;
    // Emits the nodes of `stack` not emitted yet, parents first.
    let mut emit_stack = |out: &mut Vec<Record>, stack: StackId| {
        let mut path = Vec::new();
        let mut id = stack;
        while !emitted[id as usize] {
            path.push(id);
            id = nodes[id as usize].0;
        }
        for &id in path.iter().rev() {
            emitted[id as usize] = true;
            let (parent, address) = nodes[id as usize];
            out.push(Record::StackNode {
                id,
                parent,
                address,
            });
        }
    };

    let threads: Vec<u32> = (0..4).map(|i| pid + i).collect();
    for &tid in &threads {
        out.push(Record::ThreadStart { ts, pid, tid });
    }
    let mut heap = Heap::new();
    let mut live: Vec<Vec<Block>> = threads.iter().map(|_| Vec::new()).collect();
    let mut t = 0usize;
    let mut n = 0usize;
    while n < events {
        if rng.below(10) == 0 {
            t = rng.below(threads.len() as u64) as usize;
        }
        let tid = threads[t];
        let u = rng.unit();
        ts += 100 + (u * u * 1900.0) as u64;
        let lv = &mut live[t];
        // Keep the live set around a few hundred blocks per thread.
        let p_alloc = if lv.len() < 50 {
            0.8
        } else if lv.len() > 600 {
            0.3
        } else {
            0.5
        };
        if lv.is_empty() || rng.unit() < p_alloc {
            let mut pick = rng.below(total_weight);
            let mut si = 0;
            while pick >= sites[si].weight {
                pick -= sites[si].weight;
                si += 1;
            }
            let site = &sites[si];
            let size = match site.size {
                SizeKind::Fixed(s) => s,
                SizeKind::Small => 16 + rng.below(500),
                SizeKind::Wide => {
                    let e = rng.below(17);
                    (16u64 << e) + rng.below(16u64 << e)
                }
            }
            .min(1 << 20);
            emit_stack(&mut out, site.stack);
            if site.func == AllocFn::Realloc && !lv.is_empty() && rng.below(2) == 0 {
                // Grow one of the site's recent blocks.
                let bi = lv.len() - 1 - rng.below(lv.len().min(8) as u64) as usize;
                let old = lv[bi].addr;
                let new_size = lv[bi].size * 2;
                heap.free(old, lv[bi].size);
                let new = heap.malloc(new_size);
                lv[bi].addr = new;
                lv[bi].size = new_size;
                out.push(Record::Realloc {
                    ts,
                    tid,
                    func: AllocFn::Realloc,
                    old_address: old,
                    new_address: new,
                    size: new_size,
                    stack: site.stack,
                });
            } else {
                let addr = heap.malloc(size);
                let func = if site.func == AllocFn::Realloc {
                    AllocFn::Malloc
                } else {
                    site.func
                };
                out.push(Record::Alloc {
                    ts,
                    tid,
                    func,
                    address: addr,
                    size,
                    align: 0,
                    stack: site.stack,
                });
                lv.push(Block {
                    addr,
                    size,
                    site: si,
                });
            }
        } else {
            let len = lv.len();
            let bi = match rng.below(20) {
                0..=13 => len - 1,
                14..=18 => len - 1 - rng.below(len.min(16) as u64) as usize,
                _ => rng.below(len as u64) as usize,
            };
            let b = lv.remove(bi);
            heap.free(b.addr, b.size);
            let site = &sites[b.site];
            emit_stack(&mut out, site.free_stack);
            let func = match site.func {
                AllocFn::New => AllocFn::Delete,
                AllocFn::NewArray => AllocFn::DeleteArray,
                _ => AllocFn::Free,
            };
            out.push(Record::Free {
                ts,
                tid,
                func,
                address: b.addr,
                stack: site.free_stack,
            });
        }
        n += 1;
    }
    out
}
