//! Compares flate2 on zlib-rs with miniz_oxide for what wsgate does with permessage-deflate:
//! compress one message with a fresh context (no context takeover), inflate one message, and
//! hold a compressor and a decompressor. Prints one Markdown table.
//!
//! usage: cargo run --release  (in bench/deflate-crates)

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc_zeroed(l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// A JSON message of about `n` bytes that looks like chat or progress traffic.
fn sample(n: usize) -> Vec<u8> {
    let words = [
        "progress", "upload", "percent", "user", "alice", "bob", "message", "room", "hello",
        "the", "build", "finished", "step", "compile", "status", "ok", "running", "queued",
    ];
    let mut s = String::from("[");
    let mut i = 0u64;
    while s.len() < n {
        let w = |k: u64| words[((k * 2654435761) >> 7) as usize % words.len()];
        s.push_str(&format!(
            "{{\"id\":{},\"type\":\"{}\",\"user\":\"{}\",\"text\":\"{} {} {}\",\"percent\":{}}},",
            1000 + i * 7,
            w(i),
            w(i + 1),
            w(i + 2),
            w(i + 3),
            w(i + 5),
            (i * 13) % 100
        ));
        i += 1;
    }
    s.truncate(n.saturating_sub(1));
    s.push(']');
    s.into_bytes()
}

trait Engine {
    fn name(&self) -> String;
    fn compress(&mut self, input: &[u8], out: &mut Vec<u8>);
    fn inflate(&mut self, input: &[u8], out: &mut Vec<u8>);
}

struct Flate2 {
    level: u32,
    c: flate2::Compress,
    d: flate2::Decompress,
}

impl Engine for Flate2 {
    fn name(&self) -> String {
        format!("flate2 1.1 + zlib-rs, level {}", self.level)
    }
    fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.clear();
        self.c.reset();
        out.reserve(input.len() + 64);
        loop {
            let before = self.c.total_in() as usize;
            self.c
                .compress_vec(&input[before..], out, flate2::FlushCompress::Sync)
                .unwrap();
            if self.c.total_in() as usize == input.len() && out.capacity() > out.len() {
                break;
            }
            out.reserve(out.len() + 64);
        }
        out.truncate(out.len() - 4);
    }
    fn inflate(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.clear();
        self.d.reset(false);
        let mut src = input.to_vec();
        src.extend_from_slice(&[0, 0, 0xff, 0xff]);
        out.reserve(input.len() * 8);
        loop {
            let before = self.d.total_in() as usize;
            self.d
                .decompress_vec(&src[before..], out, flate2::FlushDecompress::Sync)
                .unwrap();
            if self.d.total_in() as usize == src.len() && out.capacity() > out.len() {
                break;
            }
            out.reserve(out.len());
        }
    }
}

struct Miniz {
    level: u8,
    c: Box<miniz_oxide::deflate::core::CompressorOxide>,
    d: Box<miniz_oxide::inflate::stream::InflateState>,
}

impl Engine for Miniz {
    fn name(&self) -> String {
        format!("miniz_oxide 0.8, level {}", self.level)
    }
    fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) {
        use miniz_oxide::deflate::core::{TDEFLFlush, compress};
        self.c.reset();
        out.clear();
        out.resize(input.len() + 64, 0);
        let (_, _, n) = compress(&mut self.c, input, out, TDEFLFlush::Sync);
        out.truncate(n - 4);
    }
    fn inflate(&mut self, input: &[u8], out: &mut Vec<u8>) {
        use miniz_oxide::{DataFormat, MZFlush, inflate::stream::inflate};
        self.d.reset(DataFormat::Raw);
        let mut src = input.to_vec();
        src.extend_from_slice(&[0, 0, 0xff, 0xff]);
        out.clear();
        out.resize(input.len() * 20 + 1024, 0);
        let r = inflate(&mut self.d, &src, out, MZFlush::Sync);
        out.truncate(r.bytes_written);
    }
}

fn held<T>(make: impl FnOnce() -> T) -> (usize, T) {
    let before = LIVE.load(Ordering::Relaxed);
    let t = make();
    (LIVE.load(Ordering::Relaxed) - before, t)
}

fn main() {
    let sizes = [200usize, 1000, 16 * 1024];
    let samples: Vec<Vec<u8>> = sizes.iter().map(|&n| sample(n)).collect();
    println!("| engine | message | compressed | compress ns | inflate ns | compressor held | decompressor held |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for level in [1u32, 6] {
        let mut engines: Vec<(usize, usize, Box<dyn Engine>)> = Vec::new();
        let (cm, c) = held(|| flate2::Compress::new(flate2::Compression::new(level), false));
        let (dm, d) = held(|| flate2::Decompress::new(false));
        engines.push((cm, dm, Box::new(Flate2 { level, c, d })));
        let (cm, c) = held(|| {
            Box::new(miniz_oxide::deflate::core::CompressorOxide::new(
                miniz_oxide::deflate::core::create_comp_flags_from_zip_params(level as i32, -15, 0),
            ))
        });
        let (dm, d) =
            held(|| miniz_oxide::inflate::stream::InflateState::new_boxed(miniz_oxide::DataFormat::Raw));
        engines.push((cm, dm, Box::new(Miniz { level: level as u8, c, d })));
        for (cm, dm, e) in engines.iter_mut() {
            for s in &samples {
                let mut z = Vec::new();
                let mut back = Vec::new();
                e.compress(s, &mut z);
                e.inflate(&z, &mut back);
                assert_eq!(&back, s, "{} round trip", e.name());
                let iters = (20_000_000 / s.len()).max(200);
                let t = Instant::now();
                for _ in 0..iters {
                    e.compress(black_box(s), &mut z);
                }
                let c_ns = t.elapsed().as_nanos() as usize / iters;
                let t = Instant::now();
                for _ in 0..iters {
                    e.inflate(black_box(&z), &mut back);
                }
                let d_ns = t.elapsed().as_nanos() as usize / iters;
                println!(
                    "| {} | {} B | {} B ({:.1}x) | {} | {} | {} KB | {} KB |",
                    e.name(),
                    s.len(),
                    z.len(),
                    s.len() as f64 / z.len() as f64,
                    c_ns,
                    d_ns,
                    *cm / 1024,
                    *dm / 1024
                );
            }
        }
    }
}
